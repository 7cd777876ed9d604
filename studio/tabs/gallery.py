"""Gallery tab: newest-first grid with paging, search and filters, a detail view with the
trajectory scrubber, Recall, Delete and Favourite; and reading the recipe out of any PNG."""
from __future__ import annotations

import math
from typing import Any

import gradio as gr
from PIL import Image

from ..forms import optional_date, optional_number
from ..gallery import GalleryQuery, read_png_params
from ..generation import recall_values
from ..services import Services
from ..sweeps import KINDS as SWEEP_KINDS
from ..video_generation import sprite_row, wrap_strip
from .generate import GenerateTab
from .guidance import GuidanceTab
from .how import how_panel

PAGE_SIZE = 24
ANY = ""
HOW = """Every result is stored with its recipe: model, prompt, negative prompt, seed, steps, guidance, scheduler, size and
the other exact parameters shown under *Parameters*, in the database and inside the file itself (a PNG text chunk,
WAV or MP4 metadata; *Read the recipe out of a PNG file* reads it back). Every random number a run uses (the
starting noise, the fresh noise an ancestral sampler adds, each token a token model draws) comes from a generator
seeded with the seed; the starting noise is drawn on the CPU, so it is the same on every device:

**x_T = randn(shape, generator = torch.Generator("cpu").manual_seed(seed))**

So the same model, seed and parameters make the same image again (up to floating-point differences between
devices and library versions). **↩ Recall into Generate** fills the Generate form with the selected item's recipe
(batch size 1, that image's own seed); the **Trajectory step** slider replays its stored x_t and x0 estimates."""


def make_query(text, model_id, family, media_type, g_min, g_max, date_from, date_to, favourites, page) -> GalleryQuery:
    return GalleryQuery(
        text=text or "", model_id=model_id or None, family=family or None, media_type=media_type or None,
        guidance_min=optional_number(g_min, "Minimum guidance"), guidance_max=optional_number(g_max, "Maximum guidance"),
        created_after=optional_date(date_from, "From date"), created_before=optional_date(date_to, "To date", end_of_day=True),
        favourites_only=bool(favourites), page=int(page), page_size=PAGE_SIZE,
    )


def build_gallery_tab(services: Services, generate: GenerateTab, tabs: gr.Tabs,
                      guidance: GuidanceTab | None = None) -> dict[str, Any]:
    gallery = services.gallery
    how_panel(HOW, "gallery-how")
    with gr.Row():
        search = gr.Textbox(label="Search prompts", scale=3, elem_id="gallery-search")
        model = gr.Dropdown([ANY], value=ANY, label="Model", scale=2, allow_custom_value=True)
        family = gr.Dropdown([ANY], value=ANY, label="Family", scale=1, allow_custom_value=True)
        media = gr.Dropdown([ANY, "image", "audio", "video"], value=ANY, label="Media", scale=1)
    with gr.Row():
        g_min = gr.Textbox(label="Guidance ≥", placeholder="any")
        g_max = gr.Textbox(label="Guidance ≤", placeholder="any")
        date_from = gr.Textbox(label="From (YYYY-MM-DD)")
        date_to = gr.Textbox(label="To (YYYY-MM-DD)")
        favourites = gr.Checkbox(False, label="Favourites only")
        search_btn = gr.Button("Search", variant="primary")
    with gr.Row():
        prev_btn = gr.Button("◀ Newer", size="sm")
        page_info = gr.Markdown("", elem_id="gallery-page-info")
        next_btn = gr.Button("Older ▶", size="sm")
    grid = gr.Gallery(label="Generations (newest first)", columns=6, height=420, allow_preview=False,
                      preview=False, object_fit="contain", fit_columns=False, elem_id="gallery-grid",
                      interactive=False)
    page = gr.State(1)
    page_ids = gr.State([])
    selected = gr.State(None)
    with gr.Row():
        with gr.Column(scale=2):
            detail_image = gr.Image(label="Selected", type="filepath", height=320, interactive=False,
                                    elem_classes=["pixel-view"])
            with gr.Row():
                recall_btn = gr.Button("↩ Recall into Generate", variant="primary")
                fav_btn = gr.Button("☆ Favourite")
                delete_btn = gr.Button("🗑 Delete", variant="stop")
            open_group_btn = gr.Button("Open its sweep in the Guidance Explorer", visible=False,
                                       elem_id="gallery-open-sweep")
            detail_audio = gr.Audio(label="Sound", type="filepath", interactive=False, visible=False,
                                    elem_id="gallery-audio")
            detail_video = gr.Video(label="Clip", interactive=False, visible=False, autoplay=True, loop=True,
                                    elem_id="gallery-video")
            detail_status = gr.Markdown("Select an item.", elem_id="gallery-detail-status")
        with gr.Column(scale=3):
            d_step = gr.Slider(1, 2, value=1, step=1, label="Trajectory step")
            with gr.Row():
                d_noisy = gr.Image(label="x_t", type="pil", height=160, interactive=False, elem_classes=["pixel-view"])
                d_x0 = gr.Image(label="x0 estimate", type="pil", height=160, interactive=False, elem_classes=["pixel-view"])
            detail_params = gr.JSON(label="Parameters")
    with gr.Accordion("Read the recipe out of a PNG file", open=False):
        png_file = gr.File(label="PNG made by this studio", file_types=[".png"], type="filepath")
        png_params = gr.JSON(label="Parameters found in the file")

    filters = [search, model, family, media, g_min, g_max, date_from, date_to, favourites]

    def load_page(*values):
        *filter_values, page_no = values
        try:
            query = make_query(*filter_values, page_no)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        rows, total = gallery.search(query)
        pages = max(1, math.ceil(total / PAGE_SIZE))
        items = [(str(gallery.store.resolve(r.thumb_path or r.media_path)), f"#{r.id} {r.prompt[:60]}") for r in rows]
        info = f"Page {query.page} of {pages} · {total} item{'s' if total != 1 else ''}"
        return items, info, [r.id for r in rows], query.page

    def refresh_choices():
        return (gr.Dropdown(choices=[ANY] + gallery.distinct_values("model_id")),
                gr.Dropdown(choices=[ANY] + gallery.distinct_values("family")))

    page_outputs = [grid, page_info, page_ids, page]
    search_event = dict(fn=load_page, outputs=page_outputs, concurrency_limit=None)
    search_btn.click(inputs=filters + [gr.State(1)], api_name="gallery_search", **search_event)
    search.submit(inputs=filters + [gr.State(1)], api_visibility="private", **search_event)
    prev_btn.click(lambda p: max(1, p - 1), page, page, queue=False).then(
        inputs=filters + [page], api_visibility="private", **search_event)
    next_btn.click(lambda p: p + 1, page, page, queue=False).then(
        inputs=filters + [page], api_visibility="private", **search_event)

    def show(ids, gen_id, step):
        row = gallery.get(gen_id) if gen_id is not None else None
        if row is None:
            return (None, "Select an item.", None, None, None, gr.Slider(), "☆ Favourite", gr.Audio(visible=False),
                    gr.Video(visible=False, value=None))
        path = str(gallery.store.resolve(row.media_path))
        sound = gr.Audio(visible=False, value=None)
        problem = None
        if row.media_type == "audio":  # the picture is its spectrogram; the player plays the WAV
            problem = gallery.sound_error(row.id)
            if problem is None:
                sound = gr.Audio(visible=True, value=path)
            path = str(gallery.store.resolve(row.thumb_path)) if row.thumb_path else None
        if row.media_type == "image":
            problem = gallery.image_error(row.id)
        clip = gr.Video(visible=False, value=None)
        if row.media_type == "video":  # an MP4 plays in the player; an animated PNG (no ffmpeg) plays as the picture
            problem = gallery.video_error(row.id)
            if problem is None and path.endswith(".mp4"):
                clip = gr.Video(visible=True, value=path)
            if problem is not None or path.endswith(".mp4"):
                path = str(gallery.store.resolve(row.thumb_path)) if row.thumb_path else None
        noisy, x0, steps = _trajectory(gallery, row, step)
        info = f"#{row.id} · {row.model_id} · {row.created_at:%Y-%m-%d %H:%M} · {row.status}"
        if problem is not None:
            info += f" · ⚠ {problem}"
        return (path, info, row.params, noisy, x0, gr.Slider(maximum=max(steps, 2), value=min(step, max(steps, 1))),
                "★ Favourite" if row.favourite else "☆ Favourite", sound, clip)

    def on_select(ids, evt: gr.SelectData):
        gen_id = ids[evt.index] if evt.index is not None and evt.index < len(ids) else None
        row = gallery.get(gen_id) if gen_id is not None else None
        group = gallery.get_group(row.group_id) if row is not None and row.group_id is not None else None
        in_group = group is not None and group.kind in SWEEP_KINDS  # sweeps reopen; comparisons are plain rows
        label = f"Open its sweep #{row.group_id} in the Guidance Explorer" if in_group else ""
        return (gen_id, *show(ids, gen_id, row.trajectory_frames if row else 1),
                gr.Button(visible=in_group and guidance is not None, value=label))

    detail_outputs = [detail_image, detail_status, detail_params, d_noisy, d_x0, d_step, fav_btn, detail_audio,
                      detail_video]
    grid.select(on_select, page_ids, [selected] + detail_outputs + [open_group_btn], concurrency_limit=None,
                api_visibility="private")

    def open_item(gen_id):
        """Show generation ``gen_id`` (from another tab: a click on the Embedding Map) and switch here."""
        try:
            gen_id = int(str(gen_id).strip())
        except ValueError:
            raise gr.Error(f"No gallery item {gen_id!r}.") from None
        row = gallery.get(gen_id)
        if row is None:
            raise gr.Error(f"Gallery item #{gen_id} no longer exists.")
        group = gallery.get_group(row.group_id) if row.group_id is not None else None
        in_group = group is not None and group.kind in SWEEP_KINDS
        label = f"Open its sweep #{row.group_id} in the Guidance Explorer" if in_group else ""
        return (gen_id, *show([], gen_id, row.trajectory_frames or 1),
                gr.Button(visible=in_group and guidance is not None, value=label), gr.Tabs(selected="gallery"))

    if guidance is not None:
        def open_group(gen_id):
            row = gallery.get(gen_id) if gen_id is not None else None
            if row is None or row.group_id is None:
                raise gr.Error("This item is not part of a saved sweep.")
            return guidance.open_group(row.group_id)

        open_group_btn.click(open_group, selected, guidance.open_outputs, api_visibility="private")
    d_step.input(lambda gid, s: show([], gid, int(s))[3:5], [selected, d_step], [d_noisy, d_x0], queue=False,
                 api_visibility="private")

    def recall(gen_id):
        row = gallery.get(gen_id) if gen_id is not None else None
        if row is None:
            raise gr.Error("Select a gallery item to recall.")
        p = row.params or {}
        options = []
        if p.get("guidance_rescale"):
            options.append(f"guidance rescale {p['guidance_rescale']:g}")
        if p.get("guidance_interval"):
            lo, hi = p["guidance_interval"]
            options.append(f"guidance only from {lo * 100:g}% to {hi * 100:g}% of the steps")
        if options:
            gr.Warning(f"This image was made with {' and '.join(options)}, which the Generate tab does not offer: "
                       "Generate will run plain guidance. The Guidance Explorer runs these options.")
        return (*recall_values(row), gr.Tabs(selected="generate"))

    recall_btn.click(recall, selected, generate.recall_outputs() + [tabs], concurrency_limit=None, api_name="recall")

    def toggle_favourite(gen_id):
        row = gallery.get(gen_id) if gen_id is not None else None
        if row is None:
            raise gr.Error("Select a gallery item first.")
        gallery.set_favourite(gen_id, not row.favourite)
        return "☆ Favourite" if row.favourite else "★ Favourite"

    fav_btn.click(toggle_favourite, selected, fav_btn, queue=False, api_visibility="private")

    def delete(gen_id):
        if gen_id is None or not gallery.delete(gen_id):
            raise gr.Error("Select a gallery item to delete.")
        return None, f"Deleted #{gen_id} and its files.", None, None, None

    delete_btn.click(delete, selected, [selected, detail_status, detail_image, detail_params, d_x0],
                     queue=False, api_name="delete").then(inputs=filters + [page], api_visibility="private",
                                                           **search_event)

    def read_png(path):
        if not path:
            return None
        try:
            found = read_png_params(open(path, "rb").read())
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        if found is None:
            gr.Warning("This PNG carries no studio parameters.")
        return found

    png_file.upload(read_png, png_file, png_params, queue=False, api_visibility="private")
    return {"refresh": (load_page, filters + [page], page_outputs), "choices": (refresh_choices, [model, family]),
            "open": (open_item, [selected] + detail_outputs + [open_group_btn, tabs])}


def _trajectory(gallery, row, step: int) -> tuple[Image.Image | None, Image.Image | None, int]:
    """(x_t, x0 estimate, steps) at ``step``; a clip's trajectory is one strip of all frames' x0 per step."""
    from pipelines.previews import sprite_frame  # here, not at the top: pipelines.previews imports torch

    if not row.trajectory_path or row.trajectory_frames < 1:
        return None, None, 0
    n = row.trajectory_frames
    with Image.open(gallery.store.resolve(row.trajectory_path)) as sprite:
        sprite.load()
        k = min(max(int(step), 1), n) - 1
        if row.media_type == "video":
            frames = (row.params or {}).get("num_frames")
            strip = sprite_row(sprite, n, k)
            return None, wrap_strip(strip, frames) if isinstance(frames, int) and frames > 0 else strip, n
        return sprite_frame(sprite, n, 0, k), sprite_frame(sprite, n, 1, k), n
