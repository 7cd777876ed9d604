"""Inside the Model, cross-attention maps: the view's rendering, then the recorded run through a studio's API."""
import pytest
from gradio_client import Client
from PIL import Image

from pipelines.attention_maps import AttentionRecorder
from pipelines.requests import ImageRequest
from studio.gallery import Gallery
from studio.tabs.inside_attention import render_maps

PROMPT = "a red circle in the top left"


def test_render_one_overlay_per_prompt_token_at_a_step_or_averaged(tiny_sd):
    out = tiny_sd.generate(ImageRequest(PROMPT, num_inference_steps=3, seed=1, scheduler="ddim"),
                           attention=AttentionRecorder())
    maps, image = out.attention, out.images[0]
    hw = maps.resolutions[-1]
    label = f"{hw[0]}×{hw[1]} ({maps.layers[hw]} layer{'s' if maps.layers[hw] != 1 else ''})"
    items, caption = render_maps(maps, image, label, True, 1, False)
    assert [text.split(" · ")[0] for _, text in items] == ["a", "red", "circle", "in", "the", "top", "left"]
    assert all(isinstance(im, Image.Image) and im.size == (256, 256) for im, _ in items)
    assert f"{hw[0]}×{hw[1]}" in caption and "averaged over all recorded steps" in caption
    _, caption = render_maps(maps, image, label, False, 2, True)
    assert "step 2 of the run" in caption and "one colour scale" in caption
    assert render_maps(None, None, None, True, 1, False)[0] == []


@pytest.fixture(scope="module")
def client(studio):
    return Client(studio.url, verbose=False)


def test_a_recorded_run_through_the_api_is_saved_with_its_maps(client, studio):
    image, summary, resolution, _average, step, maps, caption = client.predict(
        "local/tiny-sd", PROMPT, 4, 5.0, 3, 2, api_name="/attention_maps")
    assert image and "recorded 2 of 4 steps" in summary
    assert len(maps) == 7 and maps[2]["caption"].startswith("circle · peak ")
    assert step["value"] == step["maximum"] == 2  # the slider spans the recorded steps
    label = resolution["value"] if isinstance(resolution, dict) else resolution
    assert label.split(" (")[0] in caption
    gen_id = int(summary.split("#")[1].split()[0])
    gallery = Gallery.open(studio.gallery_dir)
    try:
        row = gallery.get(gen_id)
        assert row.prompt == PROMPT and row.seed == 3 and row.params["attention_recorded"] is True
    finally:
        gallery.close()


@pytest.mark.parametrize(("args", "message"), [
    (("local/tiny-sd", "   ", 2, 5.0, 0, 1), "prompt"),
    (("local/tiny-sd", PROMPT, 2, 5.0, 0, 0), "less than minimum value 1"),  # Gradio's own check
    (("local/tiny-sd", PROMPT, 2, 5.0, 0, 5000), "k-th step"),
    (("local/tiny-sd", PROMPT, 2, 5.0, -5, 1), "Seed"),
    (("local/tiny-sd-broken", PROMPT, 2, 5.0, 0, 1), "corrupt or truncated"),
])
def test_bad_input_gets_a_message(client, args, message):
    with pytest.raises(Exception, match=message):
        client.predict(*args, api_name="/attention_maps")
