"""Video tab: text to a short clip with a text-to-video model, and how every frame formed.

A prompt, negative prompt, frames, fps, steps, guidance and seed go to a ``text_to_video`` family model
(:mod:`pipelines.video`). While it denoises, the animated preview shows every frame's current x0 estimate; the
result is an MP4 player, the clip as an animated preview, its frames as a strip, a trajectory viewer (a step
slider showing all frames' x0 estimates at that step) and two measures: the Motion judge's verdict and the
temporal-consistency measure beside that of ground-truth clips of the prompt. Every clip goes to the gallery as
an MP4 carrying its parameters (an animated PNG when ffmpeg is missing), with a poster frame and its trajectory.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional

import gradio as gr

from pipelines.default_settings import DefaultSettingsError, read_default_settings
from pipelines.events import GenerationCancelled
from pipelines.registry import ModelLoadError
from pipelines.streaming import Finished, iterate_steps

from ..gallery.video_files import gif_bytes
from ..services import Services
from .how import how_panel
from ..video_generation import (PreviewFiles, build_video_request, measure, measures_text, save_video_result,
                                strip, trajectory_strips, wrap_strip)

if TYPE_CHECKING:  # pipelines.video imports torch: the tab loads it when it is built
    from pipelines.video import VideoRequest

log = logging.getLogger(__name__)
PREVIEW_EVERY_S = 0.5  # write a live animated preview at most this often (the run never waits for it)
PREVIEW_SIDE = 192  # px: small frames are enlarged (without smoothing) to about this size in previews
NO_MODEL = ("No video model is installed: put a text-to-video folder (diffusers `AnimateDiffPipeline` or "
            "`TextToVideoSDPipeline` format, safetensors) under the models folder and reload. The builtin Motion "
            "model (assets/models/motion-ldm) is trained by `python -m pipelines.train motion` and ships once it "
            "meets its quality bar (see the README).")
EXAMPLES = ["a red circle moving right", "a blue square moving up on a white background",
            "a yellow star staying still", "a green triangle moving left on a black background"]
HOW = """The model denoises all **Frames** of a clip as one latent of shape (channels, frames, h, w). Spatial layers work
on each frame as an image model would; temporal layers (the temporal attention of AnimateDiff's motion modules,
or ModelScope's temporal convolutions and attention) mix each position across the frames, which is what keeps the
object the same and moving smoothly. **Steps**, **Guidance scale** (ε̃ = ε_u + w·(ε_c − ε_u)) and **Seed** act as
in Generate, on all frames at once; **Frames per second** only sets the playback speed of the saved clip. After the
run the tab measures temporal consistency on the decoded frames f_1 … f_F (pixels in 0..1):

**C = mean_t mean_pixels (d_{t+1} − d_t)²,  d_t = f_{t+1} − f_t**

that is, how much consecutive frame differences disagree: a shape gliding at constant speed scores near 0, flicker
and jumps score high (lower is smoother; fewer than 3 frames score 0). The *ground truth* number beside it is the same
measure on ground-truth clips of the prompt from the Motion world. The *Judge* line reads each frame's
colour, shape and background and the direction of the object's centroid track."""


@dataclass
class VideoTab:
    finished: Any  # the event after a clip is saved (for gallery refreshes)


def video_defaults(services: Services, model_id: Optional[str]) -> tuple[dict[str, Any], Optional[str]]:
    """(frames, fps, steps and guidance the form starts from and the scheduler runs use, a message when the model's
    defaults file is broken): the model's ``default_settings.json`` values where it sets them, else
    :class:`VideoRequest`'s (scheduler None: the model's own)."""
    from pipelines.video import VideoRequest

    usual = VideoRequest(prompt="")
    out = {"num_frames": usual.num_frames, "fps": usual.fps, "num_inference_steps": usual.num_inference_steps,
           "guidance_scale": usual.guidance_scale, "scheduler": usual.scheduler}
    try:
        folder = services.registry.get(model_id).path if model_id else None
    except ModelLoadError:
        return out, None
    if folder is None or not (folder / "default_settings.json").is_file():
        return out, None
    try:
        out.update({k: v for k, v in read_default_settings(folder).items() if k in out})
    except DefaultSettingsError as exc:
        return out, f"{exc} Using the usual video defaults instead."
    return out, None


def _scale(side: int) -> int:
    return max(1, PREVIEW_SIDE // max(side, 1))


def build_video_tab(services: Services) -> VideoTab:
    from pipelines.video import MAX_FPS  # the form's limit (pipelines.video imports torch)

    choices = [e.id for e in services.registry.entries(media="video")]
    start, problem = video_defaults(services, choices[0] if choices else None)
    if problem:
        log.warning(problem)
    previews = PreviewFiles()
    gr.Markdown("A text-to-video model denoises all the frames of a clip together (temporal layers let the frames "
                "see each other); the trajectory shows every frame's estimate of the clean clip at each step.")
    how_panel(HOW, "video-how")
    if not choices:
        gr.Markdown(f"⚠ {NO_MODEL}", elem_id="video-no-model")
    with gr.Row():
        with gr.Column(scale=2):
            model = gr.Dropdown(choices, value=choices[0] if choices else None, label="Model", elem_id="video-model")
            prompt = gr.Textbox(EXAMPLES[0], label="Prompt", lines=2, elem_id="video-prompt")
            negative = gr.Textbox("", label="Negative prompt", elem_id="video-negative")
            gr.Examples(EXAMPLES, inputs=[prompt], label="Example prompts (Motion world vocabulary)")
            with gr.Row():
                frames = gr.Number(start["num_frames"], precision=0, label="Frames", elem_id="video-frames")
                fps = gr.Number(start["fps"], label=f"Frames per second (up to {MAX_FPS:g})", elem_id="video-fps")
            with gr.Row():
                steps = gr.Slider(1, 200, value=start["num_inference_steps"], step=1, label="Steps",
                                  elem_id="video-steps")
                guidance = gr.Slider(0, 20, value=start["guidance_scale"], step=0.5, label="Guidance scale",
                                     elem_id="video-guidance")
            with gr.Row():
                seed = gr.Number(-1, precision=0, label="Seed (-1 = random)", elem_id="video-seed")
                random_seed = gr.Button("🎲 Random", size="sm")
                reuse_seed = gr.Button("♻ Reuse last seed", size="sm")
            with gr.Row():
                run = gr.Button("Generate video", variant="primary", elem_id="video-generate")
                cancel = gr.Button("Cancel", variant="stop", elem_id="video-cancel")
        with gr.Column(scale=3):
            status = gr.Markdown("Ready.", elem_id="video-status")
            with gr.Row():
                player = gr.Video(label="Clip (MP4)", interactive=False, autoplay=True, loop=True,
                                  elem_id="video-player")
                animated = gr.Image(label="Animated preview (live: every frame's x0 estimate)", type="filepath",
                                    interactive=False, elem_id="video-animated", elem_classes=["pixel-view"])
            measures = gr.Markdown("", elem_id="video-measures")
            frame_strip = gr.Gallery(label="Frames", columns=8, height=160, type="pil", format="png",
                                     interactive=False, object_fit="contain", elem_id="video-frame-strip")
            with gr.Accordion("Trajectory: every frame's x0 estimate at each step", open=True):
                step = gr.Slider(1, 2, value=1, step=1, label="Step", elem_id="video-step")
                step_strip = gr.Image(label="x0 estimates of all frames at this step (left to right, 8 a row)",
                                      type="pil", height=240, interactive=False, elem_id="video-step-strip",
                                      elem_classes=["pixel-view"])
            params = gr.JSON(label="Exact parameters")
    strips_state = gr.State(None)
    last_seed = gr.State(None)
    outputs = {"status": status, "player": player, "animated": animated, "measures": measures,
               "frames": frame_strip, "step": step, "strip": step_strip, "params": params,
               "strips": strips_state, "last_seed": last_seed}

    def generate(model_id, text, neg, n_frames, fps_v, n_steps, g, seed_v, request: gr.Request = None,
                 progress=gr.Progress()) -> Iterator[dict]:
        try:
            if not model_id:
                raise ValueError(NO_MODEL)
            scheduler = video_defaults(services, model_id)[0]["scheduler"]
            req = build_video_request(text, neg, n_frames, fps_v, n_steps, g, seed_v, scheduler)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        key = (request.session_hash if request is not None else "api") + ":video"
        flag = services.jobs.start(key)
        try:
            yield from _run(services, previews, model_id, req, flag, progress, outputs)
        finally:
            services.jobs.finish(key, flag)

    inputs = [model, prompt, negative, frames, fps, steps, guidance, seed]
    finished = run.click(generate, inputs, list(outputs.values()), api_name="generate_video", concurrency_limit=1,
                         concurrency_id=f"model-{services.device.device}")

    def cancel_fn(request: gr.Request) -> str:
        key = (request.session_hash if request is not None else "api") + ":video"
        stopped = services.jobs.cancel(key)
        return "Cancelling: the run stops after the current step." if stopped else "Nothing is running."

    cancel.click(cancel_fn, None, status, queue=False, api_name="cancel_video")

    def show_step(strips, k):
        if not strips:
            return None
        return strips[min(max(int(k), 1), len(strips)) - 1]  # already wrapped into rows

    step.input(show_step, [strips_state, step], step_strip, queue=False, api_visibility="private")
    random_seed.click(lambda: -1, None, seed, queue=False, api_visibility="private")
    reuse_seed.click(lambda s: s if s is not None else -1, last_seed, seed, queue=False, api_visibility="private")

    def model_picked(model_id):
        d, problem = video_defaults(services, model_id)
        if problem:
            gr.Warning(problem)
        return (gr.Number(value=d["num_frames"]), gr.Number(value=d["fps"]),
                gr.Slider(value=d["num_inference_steps"]), gr.Slider(value=d["guidance_scale"]))

    model.change(model_picked, [model], [frames, fps, steps, guidance], api_visibility="private")
    return VideoTab(finished=finished)


def _run(services: Services, previews: PreviewFiles, model_id: str, req: VideoRequest, flag, progress,
         out: dict) -> Iterator[dict]:
    started = time.perf_counter()
    if not services.models.is_loaded(model_id):
        yield {out["status"]: f"Loading model `{model_id}` ..."}
    try:
        model = services.models.get(model_id)
    except ModelLoadError as exc:
        raise gr.Error(str(exc)) from None
    if getattr(model, "family", None) != "text_to_video":
        raise gr.Error(f"{model_id} does not make video: pick a text-to-video model.")
    progress(0, desc="Encoding prompt")
    yield {out["status"]: "Encoding prompt ...", out["animated"]: None}
    run = lambda on_step: model.generate(req, on_step=on_step, cancel=flag)  # noqa: E731
    last_preview, result = 0.0, None
    try:
        for item in iterate_steps(run, flag):
            if isinstance(item, Finished):
                result = item.result
                break
            k, n = item.step + 1, item.num_steps
            progress((k, n), desc=f"Denoising: step {k}/{n}")
            update = {out["status"]: f"Denoising: step {k} of {n}" + (" · decoding frames ..." if k == n else "")}
            now = time.perf_counter()
            if item.pred_x0 is not None and now - last_preview >= PREVIEW_EVERY_S and k < n:
                pictures = model.decode_frames(item.pred_x0[0])  # (C, F, h, w) -> F pictures
                update[out["animated"]] = previews.write(gif_bytes(pictures, req.fps, _scale(pictures[0].height)))
                last_preview = now
            yield update
    except GenerationCancelled as exc:
        yield {out["status"]: f"Cancelled after {exc.completed_steps} of {req.num_inference_steps} steps; "
                              "nothing was saved."}
        return
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    for warning in result.warnings:
        gr.Warning(warning)
    progress(0.9, desc="Measuring")
    yield {out["status"]: "Measuring the clip (judge, temporal consistency) ..."}
    metrics = measure(result.frames, req.prompt)
    progress(0.95, desc="Saving")
    yield {out["status"]: "Saving to the gallery ..."}
    strips = trajectory_strips(model, result)
    gen_id, note = save_video_result(services.gallery, result, metrics, strips)
    sheets = [wrap_strip(s, len(result.frames)) for s in strips]
    if note:
        gr.Warning(note)
    path = str(services.gallery.read_media(gen_id)[0])
    f, h = result.frames.shape[:2]
    scale = _scale(h)
    from PIL import Image

    pictures = [Image.fromarray(frame) for frame in result.frames]
    elapsed = time.perf_counter() - started
    notes = "".join(f"\n\n⚠ {w}" for w in [*result.warnings, *([note] if note else [])])
    yield {
        out["status"]: (f"Done in {elapsed:.2f} s (sampling {result.seconds:.2f} s) · seed {req.seed} · {f} frames "
                        f"at {req.fps:g} fps · saved as gallery item #{gen_id}{notes}"),
        out["player"]: path if path.endswith(".mp4") else None,
        out["animated"]: path if not path.endswith(".mp4") else previews.write(gif_bytes(pictures, req.fps, scale)),
        out["measures"]: measures_text(metrics),
        out["frames"]: pictures,
        out["step"]: gr.Slider(maximum=max(len(strips), 2), value=max(len(strips), 1)),
        out["strip"]: sheets[-1] if sheets else wrap_strip(strip(pictures), len(pictures)),
        out["params"]: {**result.params, "metrics": metrics, "gallery_id": gen_id},
        out["strips"]: sheets or None,
        out["last_seed"]: req.seed,
    }
