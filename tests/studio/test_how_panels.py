"""Every top-level tab has a closed "How this works" panel that shows the formula that tab makes visible."""
from typing import Iterator

import gradio as gr
import pytest

from studio.app import build_app
from studio.services import build_services
from studio.settings import Settings
from studio.tabs.how import TITLE, how_panel

# top-level tab label -> {panel elem_id: a piece of the formula its text must contain}
PANELS = {
    "Generate": {"generate-how": "x̂₀ = (x_t − √(1−ᾱ_t)·ε_θ(x_t, t)) / √ᾱ_t",
                 "compare-how": "x_{t−Δt} = x_t − Δt·v_θ(x_t, t)"},
    "Guidance Explorer": {"guidance-how": "ε̃ = ε_u + w·(ε_c − ε_u)"},
    "Embedding Map": {"embedding-how": "Σⱼ exp(s·cos(Iᵢ, Tⱼ))"},
    "Tokenizer Viewer": {"tokenizer-how": "z_q = e_k,  k = argmin_j ‖z_e − e_j‖₂"},
    "Audio": {"audio-how": "M = log(max(Mel·|STFT(w)|, 10⁻⁵))"},
    "Video": {"video-how": "C = mean_t mean_pixels (d_{t+1} − d_t)²,  d_t = f_{t+1} − f_t"},
    "Train": {"train-how": "L = ‖ε − ε_θ(x_t, t, text)‖²", "lab-how": "x_{t−Δt} = x_t − Δt·v_θ(x_t, t)"},
    "Gallery": {"gallery-how": "manual_seed(seed)"},
}
OTHER_TEAMS = {"Inside the Model"}  # its sections may use how_panel; checked when they do


def _descendants(block) -> Iterator:
    for child in getattr(block, "children", None) or []:
        yield child
        yield from _descendants(child)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_models_dir):
    root = tmp_path_factory.mktemp("how")
    settings = Settings(models_dir=tiny_models_dir, gallery_dir=root / "gallery", builtin_models_dir=root / "none",
                        use_hf_cache=False, device="cpu")
    services = build_services(settings)
    try:
        yield build_app(services)
    finally:
        services.close()


def _top_tabs(demo: gr.Blocks) -> dict[str, gr.Tab]:
    main = next(b for b in _descendants(demo) if isinstance(b, gr.Tabs))  # the first Tabs is the app's own
    return {str(t.label): t for t in main.children if isinstance(t, gr.Tab)}


def _panel_text(panel) -> str:
    texts = [b.value for b in _descendants(panel) if isinstance(b, gr.Markdown)]
    assert len(texts) == 1, f"{panel.elem_id}: one Markdown expected, found {len(texts)}"
    return texts[0]


def _check_panel(panel, elem_id: str) -> str:
    assert isinstance(panel, gr.Accordion), f"{elem_id} is a {type(panel).__name__}, not an Accordion"
    assert panel.label == TITLE and panel.open is False, f"{elem_id}: {panel.label!r}, open={panel.open}"
    text = _panel_text(panel)
    assert 200 < len(text) < 2000, f"{elem_id}: {len(text)} characters is not 'a few sentences'"
    return text


def test_every_top_level_tab_has_a_closed_panel_with_its_formula(demo):
    tabs = _top_tabs(demo)
    assert set(PANELS) | OTHER_TEAMS >= set(tabs), f"a tab without an expected panel: {set(tabs) - set(PANELS)}"
    for label, panels in PANELS.items():
        assert label in tabs, f"no top-level tab {label!r}"
        found = {b.elem_id: b for b in _descendants(tabs[label]) if isinstance(b, gr.Accordion) and b.label == TITLE}
        assert set(panels) <= set(found), f"{label}: missing {set(panels) - set(found)}"
        for elem_id, formula in panels.items():
            assert formula in _check_panel(found[elem_id], elem_id), f"{elem_id} lacks its formula {formula!r}"


def test_panels_of_other_sections_follow_the_convention(demo):
    """Tabs built elsewhere (Inside the Model) that use ``*-how`` elem_ids use the same closed panel."""
    tabs = _top_tabs(demo)
    for label in OTHER_TEAMS & set(tabs):
        for block in _descendants(tabs[label]):
            if isinstance(block.elem_id, str) and block.elem_id.endswith("-how"):
                _check_panel(block, block.elem_id)


def test_panel_ids_are_unique_and_the_text_is_shown_as_written(demo):
    ids = [b.elem_id for b in _descendants(demo) if isinstance(b, gr.Accordion) and b.label == TITLE]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    markdowns = [b for b in _descendants(demo) if isinstance(b, gr.Markdown)
                 and isinstance(b.elem_id, str) and b.elem_id.endswith("-how-text")]
    assert markdowns and all(m.latex_delimiters == [] for m in markdowns)  # Unicode maths; a "$" stays a "$"


def test_how_panel_renders_a_closed_accordion():
    with gr.Blocks():
        panel = how_panel("Some text with x̂₀.", "demo-how")
    assert isinstance(panel, gr.Accordion) and panel.open is False and panel.elem_id == "demo-how"
    assert _panel_text(panel) == "Some text with x̂₀."
