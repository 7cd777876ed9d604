"""Embedding Map tab: the gallery in CLIP's joint space (images and prompts), with probes.

The work is :mod:`studio.embedding_map` (gallery items, cached embeddings, cached projections) over
:mod:`pipelines.embedding_space` (CLIP towers, PCA / t-SNE / UMAP, probes). Hovering a point shows its
thumbnail and prompt; clicking an image point opens that generation in the Gallery tab.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from PIL import Image

from ..services import Services
from .how import how_panel

if TYPE_CHECKING:  # pipelines.embedding_space imports torch: the tab loads it when it is built
    from ..embedding_map import EmbeddingMapService, MapResult

METHOD_LABELS = {"UMAP": "umap", "t-SNE": "tsne", "PCA": "pca"}
SYMBOLS = {"image": "circle", "prompt": "diamond", "text": "square", "upload": "star"}
SYMBOLS_3D = {"image": "circle", "prompt": "diamond", "text": "square", "upload": "diamond-open"}
DEFAULT_LABELS = "red, orange, yellow, green, cyan, blue, purple, pink"
MAX_UPLOADS = 64
WEBGL_ABOVE = 5000
HOW = """CLIP has an image tower and a text tower whose outputs are scaled to unit length, so the similarity of an image
embedding I and a text embedding T is the cosine cos(I, T) = I·T. It was trained on batches of N matching (image,
caption) pairs to minimise the symmetric contrastive (InfoNCE) loss

**L = −(1/2N) Σᵢ [ log( exp(s·cos(Iᵢ, Tᵢ)) / Σⱼ exp(s·cos(Iᵢ, Tⱼ)) ) + log( exp(s·cos(Tᵢ, Iᵢ)) / Σⱼ exp(s·cos(Tᵢ, Iⱼ)) ) ]**

where s = 1/τ is the learned logit scale (τ the temperature): each image must pick out its own caption among the
batch's captions, and each caption its image, so matching pairs end up close (the builtin shapes-clip's trainer by default
counts every caption in the batch that fits an image as a positive). **Build map** embeds every gallery image and, with **Prompts as
points**, every prompt, plus what you add under *Add texts and images*; the **Projection** (UMAP, t-SNE with cosine
distance, or PCA) flattens these unit vectors to the chosen **Dimensions**. Near on the map roughly means a high
cosine, but the axes mean nothing and UMAP and t-SNE distort the distances between far clusters. The *Zero-shot
classification* probe is one row of this loss: softmax over s·cos(image, text) for each label in the **Template**."""

# Hover thumbnails and click-to-open for the plotly map (gr.Plot has no click event of its own): a
# listener on each rendered plot shows the point's thumbnail beside the cursor and, on click, writes
# the generation id into a hidden textbox whose input event the server handles.
HEAD = """<script>
(function () {
  function attach(plot) {
    if (plot.__studioHooked || !plot.on) return;
    plot.__studioHooked = true;
    var tip = document.getElementById('embedding-tip');
    if (!tip) {
      tip = document.createElement('div'); tip.id = 'embedding-tip';
      tip.style.cssText = 'position:fixed;z-index:1000;pointer-events:none;display:none;background:#fff;color:#111;' +
        'border:1px solid #888;border-radius:4px;padding:4px;max-width:240px;font-size:12px';
      document.body.appendChild(tip);
    }
    plot.on('plotly_hover', function (ev) {
      var p = ev.points && ev.points[0]; if (!p || !p.customdata) return;
      tip.innerHTML = '';
      if (p.customdata[1]) {
        var img = document.createElement('img'); img.src = p.customdata[1];
        img.style.cssText = 'width:128px;height:128px;image-rendering:pixelated;display:block';
        tip.appendChild(img);
      }
      var caption = document.createElement('div'); caption.textContent = p.customdata[2]; tip.appendChild(caption);
      var e = ev.event || {}; tip.style.left = ((e.clientX || 0) + 16) + 'px'; tip.style.top = ((e.clientY || 0) + 16) + 'px';
      tip.style.display = 'block';
    });
    plot.on('plotly_unhover', function () { tip.style.display = 'none'; });
    plot.on('plotly_click', function (ev) {
      var p = ev.points && ev.points[0]; if (!p || !p.customdata || !(p.customdata[0] >= 0)) return;
      var box = document.querySelector('#embedding-clicked textarea, #embedding-clicked input');
      if (!box) return;
      box.value = String(p.customdata[0]);
      box.dispatchEvent(new Event('input', {bubbles: true}));
      setTimeout(function () { var b = document.querySelector('#embedding-open'); if (b) b.click(); }, 50);
    });
  }
  new MutationObserver(function () {
    document.querySelectorAll('#embedding-plot .js-plotly-plot').forEach(attach);
  }).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>"""


@dataclass
class EmbeddingMapTab:
    clicked: gr.Textbox  # a generation id, written by a click on the map
    open_button: gr.Button  # clicked by the map's script after writing ``clicked``


def _file_url(path: Optional[Path]) -> str:
    return f"/gradio_api/file={path}" if path is not None else ""


def map_figure(service: EmbeddingMapService, result: MapResult, colour_by: str, lines: bool) -> go.Figure:
    """The scatter: colour by ``colour_by`` (legend per category; a colour bar for guidance), symbol by kind."""
    pts, xyz = result.points, result.coords
    three = result.dims == 3
    # WebGL beyond a few thousand points (SVG markers get slow); same events, same hover and click.
    scatter = go.Scatter3d if three else (go.Scattergl if len(pts) > WEBGL_ABOVE else go.Scatter)
    values = [service.category(p, colour_by) for p in pts]
    fig = go.Figure()
    if lines:  # prompt -> image segments
        where = {(p.kind, p.key): i for i, p in enumerate(pts) if p.kind == "prompt"}
        seg: list[list[Optional[float]]] = [[] for _ in range(result.dims)]
        for i, p in enumerate(pts):
            j = where.get(("prompt", p.prompt_key)) if p.prompt_key else None
            if j is None:
                continue
            for d in range(result.dims):
                seg[d] += [float(xyz[j, d]), float(xyz[i, d]), None]
        if seg[0]:
            kw = {"z": seg[2]} if three else {}
            fig.add_trace(scatter(x=seg[0], y=seg[1], mode="lines", line={"color": "rgba(120,120,120,0.35)", "width": 1},
                                  hoverinfo="skip", name="prompt → image", **kw))
    numeric = colour_by == "guidance"
    groups: dict[Any, list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault("all" if numeric else ("n/a" if v is None else str(v)), []).append(i)
    for name, idx in sorted(groups.items(), key=lambda kv: str(kv[0])):
        sub = [pts[i] for i in idx]
        custom = [[p.gen_id if p.gen_id is not None and p.kind in ("image", "prompt") else -1,
                   _file_url(p.thumb), f"{p.kind}: {p.label[:200]}"] for p in sub]
        marker: dict[str, Any] = {"size": 5 if three else 8, "symbol": [SYMBOLS[p.kind] for p in sub],
                                  "line": {"width": 0}}
        if numeric:
            marker.update(color=[np.nan if values[i] is None else values[i] for i in idx], colorscale="Viridis",
                          showscale=True, colorbar={"title": "guidance"})
        if three:
            marker["symbol"] = [SYMBOLS_3D[p.kind] for p in sub]
        kw = {"z": xyz[idx, 2]} if three else {}
        fig.add_trace(scatter(x=xyz[idx, 0], y=xyz[idx, 1], mode="markers", name=f"{colour_by}: {name}" if not numeric
                              else "items", marker=marker, customdata=custom, hoverinfo="none", **kw))
    title = f"{result.model_id} · {result.method.upper()} {result.dims}-D · {len(pts)} points"
    fig.update_layout(title=title, height=560, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"itemsizing": "constant"},
                      clickmode="event", dragmode="pan" if not three else "orbit")
    return fig


def _stats_text(result: MapResult, notes: list[str]) -> str:
    s = result.stats
    text = (f"**{s['items']} points** ({s['distinct']} distinct items) · embedded now: {s['embedded']}, "
            f"from cache: {s['reused']} · map {'from cache' if s['projection_cached'] else 'computed'} · "
            f"{s['seconds']:.1f} s")
    if s.get("unreadable"):
        notes = [*notes, f"{s['unreadable']} gallery image(s) left out: their files are missing or damaged (the "
                         "Gallery tab shows which)."]
    return text + "".join(f"\n\n⚠ {n}" for n in notes)


def _read_images(files: Optional[list]) -> tuple[list[tuple[str, Image.Image]], list[str]]:
    """Uploaded files as RGB images; notes for files that are not images (skipped) or were converted."""
    out, notes = [], []
    for f in (files or [])[:MAX_UPLOADS]:
        path = Path(getattr(f, "name", f))
        try:
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                image = im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            notes.append(f"{path.name} is not an image this studio can read ({exc.__class__.__name__}): skipped")
            continue
        if mode != "RGB":
            notes.append(f"{path.name}: converted from {mode} to RGB")
        out.append((path.name, image))
    if files and len(files) > MAX_UPLOADS:
        notes.append(f"only the first {MAX_UPLOADS} of {len(files)} files were added")
    return out, notes


def build_embedding_map_tab(services: Services) -> EmbeddingMapTab:
    from pipelines import embedding_space as es

    from ..embedding_map import COLOUR_BY, shared_service

    service = shared_service(services.gallery, Path(services.settings.models_dir), services.device.device)
    choices = service.choices()
    gr.Markdown("Every image of the gallery (through CLIP's image tower) and every prompt (through its text tower) "
                "in one space. Close points mean CLIP sees them as alike. Hover a point for its thumbnail; click an "
                "image to open it in the Gallery (Recall works from there).")
    how_panel(HOW, "embedding-how")
    with gr.Row():
        model = gr.Dropdown(choices, value=choices[0] if choices else None, label="CLIP model", scale=2)
        method = gr.Radio(list(METHOD_LABELS), value="UMAP", label="Projection", scale=2)
        dims = gr.Radio(["2-D", "3-D"], value="2-D", label="Dimensions", scale=1)
        colour_by = gr.Dropdown(list(COLOUR_BY), value="family", label="Colour by", scale=2)
    with gr.Row():
        include_prompts = gr.Checkbox(True, label="Prompts as points")
        lines = gr.Checkbox(False, label="Lines from each prompt to its image")
        build = gr.Button("Build map", variant="primary", elem_id="embedding-build")
    with gr.Accordion("Add texts and images to the map", open=False):
        with gr.Row():
            add_texts = gr.Textbox(label="Texts (one per line)", lines=3, placeholder="a red circle\na blue star")
            add_images = gr.File(label="Images", file_count="multiple", file_types=["image"], type="filepath")
    status = gr.Markdown("", elem_id="embedding-status")
    plot = gr.Plot(label="Embedding map", elem_id="embedding-plot")
    clicked = gr.Textbox(visible="hidden", elem_id="embedding-clicked")
    open_button = gr.Button("Open clicked item", visible="hidden", elem_id="embedding-open")
    current = gr.State(None)

    with gr.Accordion("Probes: zero-shot, compositional, arithmetic", open=False):
        with gr.Tab("Zero-shot classification"):
            with gr.Row():
                zs_image = gr.Image(label="Image", type="pil", height=200, elem_classes=["pixel-view"])
                with gr.Column():
                    zs_gen = gr.Number(label="…or gallery item #", precision=0)
                    zs_labels = gr.Textbox(DEFAULT_LABELS, label="Labels (comma-separated)")
                    zs_template = gr.Textbox("a {} shape", label="Template ({} = label)")
                    zs_btn = gr.Button("Classify")
            zs_plot = gr.Plot(label="softmax over logit_scale · cos(image, text)")
            zs_note = gr.Markdown("")
        with gr.Tab("Which is closer?"):
            with gr.Row():
                cp_a = gr.Textbox("a red car", label="A")
                cp_b = gr.Textbox("a red truck", label="B")
                cp_c = gr.Textbox("a blue car", label="C")
            cp_btn = gr.Button("Compare")
            cp_out = gr.Markdown("", elem_id="embedding-compare")
        with gr.Tab("Arithmetic"):
            with gr.Row():
                ar_gen = gr.Number(label="Gallery item # (image)", precision=0)
                ar_minus = gr.Textbox("red", label="− text")
                ar_plus = gr.Textbox("blue", label="+ text")
                ar_btn = gr.Button("Find nearest")
            ar_out = gr.Gallery(label="Nearest gallery images to image − text + text", columns=8, height=200)
            ar_note = gr.Markdown("")

    def on_build(model_id, method_label, dims_label, colour, prompts, draw_lines, texts, files,
                 progress=gr.Progress()):
        if not model_id:
            raise gr.Error("No CLIP model found: the builtin assets/clip/shapes-clip is missing.")
        images, notes = _read_images(files)
        try:
            result = service.build_map(model_id, METHOD_LABELS[method_label], 3 if dims_label == "3-D" else 2,
                                       bool(prompts), (texts or "").splitlines(), images,
                                       progress=lambda f, d: progress(f, desc=d))
        except (ValueError, OSError) as exc:
            return None, f"⚠ {exc}", None
        emb = service.embedder(model_id)
        notes += [f"{n}: {note}" for n, im in images if (note := emb.prepare(im)[1])]
        return map_figure(service, result, colour, draw_lines), _stats_text(result, notes), result

    build.click(on_build, [model, method, dims, colour_by, include_prompts, lines, add_texts, add_images],
                [plot, status, current], api_name="embedding_map")

    def recolour(result, colour, draw_lines):
        if result is None:
            return gr.Plot()
        return map_figure(service, result, colour, draw_lines)

    for control in (colour_by, lines):
        control.change(recolour, [current, colour_by, lines], plot, api_visibility="private")

    def gallery_image(gen_id) -> Image.Image:
        try:
            return services.gallery.load_image(gen_id)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None

    def classify(model_id, image, gen_id, labels, template):
        if image is None and gen_id in (None, ""):
            raise gr.Error("Give an image (upload one, or a gallery item number).")
        image = image if image is not None else gallery_image(gen_id)
        emb = service.embedder(model_id)
        rgb, note = emb.prepare(image)
        try:
            rows = es.zero_shot(emb, emb.embed_images([rgb])[0], [l for l in (labels or "").split(",")], template or "{}")
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        rows.sort(key=lambda r: -r[1])
        fig = go.Figure(go.Bar(x=[r[1] for r in rows], y=[r[0] for r in rows], orientation="h",
                               text=[f"{r[1]:.1%} (cos {r[2]:.3f})" for r in rows], textposition="auto"))
        fig.update_layout(height=60 + 28 * len(rows), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                          yaxis={"autorange": "reversed"}, xaxis={"range": [0, 1]})
        return fig, (f"Image {note}." if note else f"Top label: **{rows[0][0]}** ({rows[0][1]:.1%}).")

    zs_btn.click(classify, [model, zs_image, zs_gen, zs_labels, zs_template], [zs_plot, zs_note], api_name="zero_shot")

    def compare(model_id, a, b, c):
        try:
            r = es.compare_texts(service.embedder(model_id), a or "", b or "", c or "")
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        verdict = {"B": f"**B** (“{b}”) is closer to A", "C": f"**C** (“{c}”) is closer to A",
                   "tie": "B and C are equally close to A"}[r["closer"]]
        return (f"{verdict}: cos(A, B) = {r['cos_ab']:.4f}, cos(A, C) = {r['cos_ac']:.4f} "
                f"(margin {r['margin']:.4f}); cos(B, C) = {r['cos_bc']:.4f}.")

    cp_btn.click(compare, [model, cp_a, cp_b, cp_c], cp_out, api_name="compare_texts")

    def arithmetic(model_id, gen_id, minus, plus, progress=gr.Progress()):
        if gen_id in (None, ""):
            raise gr.Error("Give a gallery item number (an image).")
        emb = service.embedder(model_id)
        points = [p for p in service.gallery_points(include_prompts=False)]
        if not points:
            raise gr.Error("The gallery has no images to search.")
        points, vectors, _ = service.embed(emb, points, progress=lambda f, d: progress(f, desc=d))
        query = emb.embed_images([gallery_image(gen_id)])[0]
        texts = emb.embed_texts([minus or "", plus or ""])
        hits = es.nearest(query - texts[0] + texts[1], vectors, k=9)
        items = [(str(points[i].path), f"#{points[i].gen_id} cos {s:.3f}: {points[i].label[:50]}") for i, s in hits
                 if points[i].gen_id != int(gen_id)][:8]
        return items, f"image #{int(gen_id)} − “{minus}” + “{plus}”: {len(items)} nearest gallery images (cosine)."

    ar_btn.click(arithmetic, [model, ar_gen, ar_minus, ar_plus], [ar_out, ar_note], api_name="embedding_arithmetic")
    return EmbeddingMapTab(clicked=clicked, open_button=open_button)
