"""Tokenizer Viewer tab: what the models read. Text as BPE / SentencePiece tokens of every text encoder
of a pipeline, an image as a CLIP tower's grid (patches, position embeddings, class-token attention),
and an image as VQGAN codebook ids, decoded and edited. The work is :mod:`pipelines.tokenizer_view`."""
from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw

from pipelines import embedding_space as es, tokenizer_view as tv
from pipelines.families import TOKEN_FAMILIES

from ..embedding_map import shared_service
from ..services import Services
from .how import how_panel

BUILTIN_VQGAN = es.ASSETS / "tokenizers" / "shapes-vqgan"
MINI_CLIP_ONLY = "mini-CLIP text tower only"
MAX_TEXT = 20_000  # characters tokenized; longer input is cut first (and said)
MAX_CUT_SHOWN = 200
VIEW = 288  # pixels of the patch and token views
HOW = """Models read ids, not letters or pixels. **Text**: each text encoder's tokenizer splits the **Prompt** into
byte-pair (BPE) pieces (SentencePiece pieces for a T5 encoder), adds start and end tokens and pads or cuts to its
context length (32 for the builtin mini-CLIP, 77 for Stable Diffusion's CLIP); struck-through pieces were cut and
never reach the model. **Image patches**: a ViT cuts the image into a grid of p×p patches read in raster order after
a class token (the builtin ModifiedResNet instead pools a 2×2 grid of its last feature map). **VQGAN codes**: the
encoder turns each cell of a coarse grid into a vector z_e, and quantisation replaces it by the nearest of the
codebook's vectors e_1 … e_K:

**z_q = e_k,  k = argmin_j ‖z_e − e_j‖₂**

The grid shows the ids k, and *Decoded from the ids* rebuilds the image from the e_k alone, so what it loses is what
the codebook cannot say. *Edit tokens* sets a region (**Rows**, **Columns**) to one **Codebook id** or to another
image's ids, and *Codebook usage* counts each k over the gallery. A token prior (the VQGAN + prior family in
Generate) makes images by predicting these ids one at a time."""
KIND_STYLE = {"start": "background:#d9f2d9;border-color:#3a3", "end": "background:#f9dcdc;border-color:#c33",
              "pad": "background:#eee;color:#888;border-color:#ccc"}


def _colour(i: int) -> str:
    return f"hsl({(i * 47) % 360},70%,85%)"


def chips_html(view: tv.TokenView) -> str:
    """One encoder's tokens as chips (piece over id), the limit marked, cut pieces struck through."""
    used = sum(t.kind != "pad" for t in view.kept)
    head = (f"<div class='tok-head'><b>{html.escape(view.name)}</b> · {used} of {view.limit} tokens used"
            + (f" · <span style='color:#c33'><b>{len(view.cut)} cut</b></span>" if view.cut else " · nothing cut")
            + (f" · {html.escape(view.note)}" if view.note else "") + "</div>")
    chips, pads = [], 0
    for k, t in enumerate(view.kept):
        if t.kind == "pad":
            pads += 1
            continue
        style = KIND_STYLE.get(t.kind, f"background:{_colour(k)}")
        chips.append(f"<span class='tok-chip' style='{style}' title='position {k}'>"
                     f"{html.escape(t.piece)}<sub>{t.id}</sub></span>")
    if pads:
        chips.append(f"<span class='tok-chip' style='{KIND_STYLE['pad']}'>{pads} × padding "
                     f"{html.escape(view.kept[-1].piece)}<sub>{view.kept[-1].id}</sub></span>")
    chips.append(f"<span class='tok-limit'>✂ limit {view.limit}</span>")
    for t in view.cut[:MAX_CUT_SHOWN]:
        chips.append(f"<span class='tok-chip tok-cut' style='color:#c33;background:#fff'>{html.escape(t.piece)}"
                     f"<sub>{t.id}</sub></span>")
    if len(view.cut) > MAX_CUT_SHOWN:
        chips.append(f"<span class='tok-limit'>… and {len(view.cut) - MAX_CUT_SHOWN} more cut</span>")
    return f"<div class='tok-view'>{head}<div>{''.join(chips)}</div></div>"


TOKEN_CSS = """
.tok-view { margin: 6px 0 14px; }
.tok-chip { display: inline-block; margin: 2px; padding: 1px 5px; border: 1px solid #bbb; border-radius: 4px;
            font-family: monospace; font-size: 13px; color: #111; }
.tok-chip sub { color: #555; font-size: 10px; margin-left: 3px; }
.tok-cut { background: #fff; color: #c33; text-decoration: line-through; border-style: dashed; }
.tok-limit { display: inline-block; margin: 2px 6px; color: #c33; font-weight: bold; }
.vq-grid { border-collapse: collapse; }
.vq-grid td { font: 9px monospace; text-align: center; padding: 0 1px; min-width: 22px; color: #111; }
"""


@lru_cache(maxsize=16)
def _folder_tokenizers(folder: str) -> tuple[tuple[str, Any], ...]:
    """(subfolder, tokenizer) for each tokenizer* subfolder of a pipeline folder."""
    from transformers import AutoTokenizer

    out = []
    for sub in sorted(Path(folder).glob("tokenizer*")):
        if sub.is_dir():
            try:
                out.append((sub.name, AutoTokenizer.from_pretrained(sub)))
            except (OSError, ValueError) as exc:
                out.append((sub.name, exc))
    return tuple(out)


def _grid_overlay(image: Image.Image, grid: int, heat: Optional[np.ndarray] = None, numbers: bool = True,
                  mark: Optional[int] = None) -> Image.Image:
    """The image at VIEW px with the grid drawn, cells numbered in sequence order, an optional heatmap."""
    base = image.convert("RGB").resize((VIEW, VIEW), Image.NEAREST)
    if heat is not None:
        h = np.asarray(heat, np.float32)
        h = (h - h.min()) / max(float(h.max() - h.min()), 1e-8)
        cells = Image.fromarray((h * 255).astype(np.uint8)).resize((VIEW, VIEW), Image.NEAREST)
        red = Image.merge("RGB", (cells, Image.new("L", cells.size, 0), Image.new("L", cells.size, 0)))
        base = Image.blend(base, red, 0.55)
    draw = ImageDraw.Draw(base)
    step = VIEW / grid
    for k in range(grid + 1):
        draw.line([(k * step, 0), (k * step, VIEW)], fill=(255, 255, 255), width=1)
        draw.line([(0, k * step), (VIEW, k * step)], fill=(255, 255, 255), width=1)
    if numbers and grid <= 16:
        for r in range(grid):
            for c in range(grid):
                draw.text((c * step + 2, r * step + 1), str(r * grid + c + 1), fill=(255, 255, 0))
    if mark is not None:
        r, c = divmod(mark, grid)
        draw.rectangle([c * step, r * step, (c + 1) * step, (r + 1) * step], outline=(0, 255, 0), width=3)
    return base


def vq_grid_html(grid: np.ndarray) -> str:
    rows = "".join("<tr>" + "".join(f"<td style='background:{_colour(int(v))}'>{int(v)}</td>" for v in row) + "</tr>"
                   for row in grid)
    return f"<table class='vq-grid'>{rows}</table>"


def build_tokenizer_viewer_tab(services: Services) -> dict[str, Any]:
    clip = shared_service(services.gallery, Path(services.settings.models_dir), services.device.device)
    clip_choices = clip.choices()
    models = [MINI_CLIP_ONLY] + [e.id for e in services.registry.entries(media=None)]
    vq_choices = {"builtin/shapes-vqgan (tokenizer)": BUILTIN_VQGAN} if (BUILTIN_VQGAN / "config.json").is_file() else {}
    vq_choices.update({e.id: e.path / "vqvae" for e in services.registry.entries()
                       if e.family in TOKEN_FAMILIES and (e.path / "vqvae").is_dir()})
    gr.HTML(f"<style>{TOKEN_CSS}</style>", padding=False)
    how_panel(HOW, "tokenizer-how")

    def gallery_image(gen_id) -> Image.Image:
        try:
            return services.gallery.load_image(gen_id)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None

    def pick_image(image, gen_id) -> Image.Image:
        if image is not None:
            return image
        if gen_id in (None, ""):
            raise gr.Error("Give an image: upload one or type a gallery item number.")
        return gallery_image(gen_id)

    with gr.Tab("Text"):
        with gr.Row():
            text = gr.Textbox("a small red circle in the top left on a black background", label="Prompt", lines=2,
                              scale=3, elem_id="tok-text")
            pipe = gr.Dropdown(models, value=models[1] if len(models) > 1 else models[0], scale=1,
                               label="Text encoders of")
        tok_btn = gr.Button("Tokenize", variant="primary", elem_id="tok-run")
        tok_note = gr.Markdown("")
        tok_html = gr.HTML("", elem_id="tok-view")

    def tokenize(prompt, model_id):
        prompt = prompt or ""
        notes = []
        if len(prompt) > MAX_TEXT:
            notes.append(f"The text has {len(prompt):,} characters: only the first {MAX_TEXT:,} were tokenized "
                         "(every encoder below cuts far earlier anyway).")
            prompt = prompt[:MAX_TEXT]
        views = []
        if clip_choices:
            views.append(tv.text_tokens(clip.embedder(es.BUILTIN_CLIP_ID).tokenizer, prompt, "builtin mini-CLIP (open_clip)"))
        if model_id and model_id != MINI_CLIP_ONLY:
            entry = services.registry.get(model_id)
            found = _folder_tokenizers(str(entry.path))
            if not found:
                notes.append(f"{model_id} has no text tokenizer (a class-conditional model reads label ids).")
            for sub, tok in found:
                if isinstance(tok, Exception):
                    notes.append(f"{model_id}/{sub} could not be loaded: {tok}")
                else:
                    views.append(tv.text_tokens(tok, prompt, f"{model_id} · {sub} ({type(tok).__name__})"))
        cut = [v for v in views if v.cut]
        if cut:
            notes.append("Cut: " + "; ".join(f"{v.name} drops {len(v.cut)} tokens after its limit of {v.limit}"
                                              for v in cut))
        return "\n\n".join(notes), "".join(chips_html(v) for v in views)

    tok_btn.click(tokenize, [text, pipe], [tok_note, tok_html], api_name="tokenize")
    text.submit(tokenize, [text, pipe], [tok_note, tok_html], api_visibility="private")

    with gr.Tab("Image patches"):
        with gr.Row():
            p_image = gr.Image(label="Image", type="pil", height=200, elem_classes=["pixel-view"])
            with gr.Column():
                p_gen = gr.Number(label="…or gallery item #", precision=0, elem_id="patch-gen")
                p_model = gr.Dropdown(clip_choices, value=clip_choices[0] if clip_choices else None, label="CLIP image tower")
                p_btn = gr.Button("Show the grid", variant="primary", elem_id="patch-run")
        p_note = gr.Markdown("")
        with gr.Row():
            p_grid = gr.Image(label="Cells in sequence order (click one)", type="pil", height=VIEW, interactive=False,
                              elem_classes=["pixel-view"], elem_id="patch-grid")
            p_pos = gr.Image(label="Position-embedding similarity to the clicked cell", type="pil", height=VIEW,
                             interactive=False, elem_classes=["pixel-view"])
            p_attn = gr.Image(label="Attention of the class token", type="pil", height=VIEW, interactive=False,
                              elem_classes=["pixel-view"])
        p_state = gr.State(None)

    def patches(image, gen_id, model_id):
        img = pick_image(image, gen_id)
        emb = clip.embedder(model_id)
        view = tv.patch_view(emb, img)
        _, conv = emb.prepare(img)
        rgb = img.convert("RGB").resize((emb.image_size, emb.image_size), Image.BICUBIC)
        note = (f"**{model_id}**: {view.note}. Input {view.image_size}×{view.image_size} px → {view.grid}×{view.grid} "
                f"cells of {view.cell} px" + (" plus the class token" if view.kind == "vit" else " plus the mean token")
                + (f". The image was {conv}." if conv else "."))
        state = {"image": rgb, "grid": view.grid, "pos": view.pos_similarity.tolist()}
        return (note, _grid_overlay(rgb, view.grid), _grid_overlay(rgb, view.grid, view.pos_similarity[0].reshape(view.grid, view.grid), False, 0),
                _grid_overlay(rgb, view.grid, view.cls_attention, False), state)

    p_btn.click(patches, [p_image, p_gen, p_model], [p_note, p_grid, p_pos, p_attn, p_state], api_name="patches")

    def pick_cell(state, evt: gr.SelectData):
        if not state:
            return gr.Image()
        grid = state["grid"]
        x, y = evt.index
        cell = min(int(y / VIEW * grid), grid - 1) * grid + min(int(x / VIEW * grid), grid - 1)
        sim = np.asarray(state["pos"])[cell].reshape(grid, grid)
        return _grid_overlay(state["image"], grid, sim, False, cell)

    p_grid.select(pick_cell, p_state, p_pos, api_visibility="private")

    with gr.Tab("VQGAN codes"):
        with gr.Row():
            v_image = gr.Image(label="Image", type="pil", height=200, elem_classes=["pixel-view"])
            with gr.Column():
                v_gen = gr.Number(label="…or gallery item #", precision=0, elem_id="vq-gen")
                v_model = gr.Dropdown(list(vq_choices), value=next(iter(vq_choices), None), label="VQGAN")
                v_btn = gr.Button("Encode", variant="primary", elem_id="vq-run")
        v_note = gr.Markdown("")
        with gr.Row():
            with gr.Column(scale=3):
                v_grid = gr.HTML("", elem_id="vq-grid")
            v_recon = gr.Image(label="Decoded from the ids", type="pil", height=VIEW, interactive=False,
                               elem_classes=["pixel-view"], scale=2)
        with gr.Accordion("Edit tokens: set a region to one id, or to another image's tokens", open=False):
            with gr.Row():
                e_rows = gr.Textbox("0-3", label="Rows (from-to)")
                e_cols = gr.Textbox("0-3", label="Columns (from-to)")
                e_code = gr.Number(label="Codebook id", precision=0)
                e_other = gr.Number(label="…or tokens of gallery item #", precision=0)
                e_btn = gr.Button("Apply and decode")
            e_out = gr.Image(label="Edited", type="pil", height=VIEW, interactive=False, elem_classes=["pixel-view"])
        with gr.Row():
            h_limit = gr.Number(2000, label="Gallery images (newest)", precision=0)
            h_btn = gr.Button("Codebook usage over the gallery")
        h_plot = gr.Plot(label="How often each codebook id occurs")
        v_state = gr.State(None)

    @lru_cache(maxsize=4)
    def load_vq(name: str):
        from diffusers import VQModel

        if name not in vq_choices:
            raise gr.Error(f"No VQGAN {name!r}.")
        return VQModel.from_pretrained(vq_choices[name], use_safetensors=True).eval()

    def encode(image, gen_id, name):
        img = pick_image(image, gen_id)
        vq = load_vq(name)
        size = tv.vq_image_size(vq)
        grid = tv.vq_encode(vq, [img])[0]
        recon = tv.vq_decode(vq, grid)
        rgb = img.convert("RGB").resize((size, size), Image.BICUBIC)
        mse = float(np.mean((np.asarray(recon, np.float32) - np.asarray(rgb, np.float32)) ** 2))
        psnr = 10 * np.log10(255 ** 2 / max(mse, 1e-10))
        said = "" if img.size == (size, size) and img.mode == "RGB" else f" (the image was converted to RGB {size}×{size})"
        note = (f"{grid.shape[0]}×{grid.shape[1]} = {grid.numel()} tokens from a codebook of "
                f"{vq.config.num_vq_embeddings}; {len(set(grid.flatten().tolist()))} distinct ids; reconstruction "
                f"PSNR {psnr:.1f} dB{said}.")
        return note, vq_grid_html(grid.numpy()), recon.resize((VIEW, VIEW), Image.NEAREST), grid.tolist()

    v_btn.click(encode, [v_image, v_gen, v_model], [v_note, v_grid, v_recon, v_state], api_name="vq_encode")

    def _range(value: str, what: str) -> tuple[int, int]:
        try:
            parts = [int(p) for p in str(value).replace(" ", "").split("-") if p != ""]
        except ValueError:
            raise gr.Error(f"{what}: write a range such as 2-5 or one number.") from None
        if not 1 <= len(parts) <= 2:
            raise gr.Error(f"{what}: write a range such as 2-5 or one number.")
        return parts[0], parts[-1]

    def edit(state, name, rows, cols, code, other):
        import torch

        if state is None:
            raise gr.Error("Encode an image first.")
        vq = load_vq(name)
        grid = torch.tensor(state)
        source = tv.vq_encode(vq, [gallery_image(other)])[0] if other not in (None, "") else None
        try:
            edited = tv.edit_tokens(grid, _range(rows, "Rows"), _range(cols, "Columns"),
                                    code=None if source is not None or code in (None, "") else int(code),
                                    source=source, vocab=vq.config.num_vq_embeddings)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        return tv.vq_decode(vq, edited).resize((VIEW, VIEW), Image.NEAREST)

    e_btn.click(edit, [v_state, v_model, e_rows, e_cols, e_code, e_other], e_out, api_name="vq_edit")

    def usage(name, limit, progress=gr.Progress()):
        vq = load_vq(name)
        points = clip.gallery_points(include_prompts=False, limit=max(1, int(limit or 2000)))
        if not points:
            raise gr.Error("The gallery has no images yet.")
        counts = np.zeros(vq.config.num_vq_embeddings, np.int64)
        for i in range(0, len(points), 128):
            images = [Image.open(p.path).convert("RGB") for p in points[i:i + 128]]
            counts += np.bincount(tv.vq_encode(vq, images).flatten().numpy(), minlength=len(counts))
            progress((i + len(images)) / len(points), desc="tokenizing gallery images")
        fig = go.Figure(go.Bar(x=list(range(len(counts))), y=counts.tolist()))
        fig.update_layout(height=260, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis_title="codebook id",
                          title=f"{len(points)} images · {int((counts > 0).sum())} of {len(counts)} ids used")
        return fig

    h_btn.click(usage, [v_model, h_limit], h_plot, api_name="vq_usage")
    return {}
