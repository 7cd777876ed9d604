"""Audio tab: text to sound with a latent diffusion model over mel spectrograms, and how the sound formed.

A prompt, negative prompt, duration, steps, guidance and seed go to an audio family model
(:mod:`pipelines.audio_ldm`); the result is a player, its mel spectrogram, and a trajectory viewer:
a slider over the steps shows the spectrogram of the x0 estimate at that step, and a second player
plays that estimate through the model's vocoder. Every result goes to the gallery as a WAV file
carrying its parameters, with the spectrogram as its thumbnail and the trajectory as a sprite
(row 0: the noisy latent x_t decoded, row 1: the x0 estimate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import gradio as gr
import numpy as np
from PIL import Image

from pipelines import audio as au
from pipelines.registry import ModelLoadError
from pipelines.worlds import tones

from ..generation import resolve_seed
from ..services import Services
from .how import how_panel

PICTURE_SIZE = (512, 128)  # time across, frequency up: one scale for every clip length
NO_MODEL = ("No audio model is installed: put an AudioLDM folder (diffusers `AudioLDMPipeline` format, "
            "safetensors) under the models folder and reload. The builtin Tones model ships in "
            "assets/models/tones-ldm.")
HOW = """The sound is made as a picture. A waveform w becomes a log-mel spectrogram (time across, frequency up):

**M = log(max(Mel·|STFT(w)|, 10⁻⁵))**

with Mel the mel filter bank (128 bands for the builtin tones-ldm). A VAE compresses M to a latent z, and a latent
diffusion model denoises z from noise fixed by the **Seed**, over the **Steps**, conditioned on the **Prompt**
through a CLAP text encoder; **Guidance** is the classifier-free scale w in ε̃ = ε_u + w·(ε_c − ε_u), with the
**Negative prompt** feeding ε_u. **Duration** sets how many spectrogram frames z covers. The VAE decodes z to a
spectrogram and a vocoder turns it back into sound: a HiFi-GAN in a real AudioLDM, Griffin-Lim phase recovery (no
weights) in the builtin tones-ldm. The **Trajectory step** slider shows the spectrogram of the x0 estimate after
that step and plays it through the same vocoder."""


def audio_defaults(services: Services, model_id: Optional[str]) -> tuple[int, float]:
    """(steps, guidance) the form starts from: the model's ``default_settings.json`` when it has one, else
    AudioLDM's usual values (those of :class:`AudioRequest`)."""
    from pipelines.audio_ldm import AudioRequest
    from pipelines.default_settings import FILENAME, DefaultSettingsError, read_default_settings

    usual = AudioRequest(prompt="")
    try:
        folder = services.registry.get(model_id).path if model_id else None
        if folder is None or not (folder / FILENAME).is_file():
            return usual.num_inference_steps, usual.guidance_scale
        settings = read_default_settings(folder)
    except (ModelLoadError, DefaultSettingsError):
        return usual.num_inference_steps, usual.guidance_scale
    return int(settings["num_inference_steps"]), float(settings["guidance_scale"])


@dataclass
class AudioTab:
    finished: Any  # the event after a clip is saved (for gallery refreshes)


def _pictures(mels: np.ndarray, lo: float, hi: float) -> list[Image.Image]:
    """(N, frames, n_mels) mel arrays -> spectrogram pictures on one colour scale."""
    return [au.spectrogram_image(m.T, vmin=lo, vmax=hi, height=0).resize(PICTURE_SIZE, Image.BILINEAR) for m in mels]


def judge_note(prompt: str, samples: np.ndarray, sample_rate: int) -> str:
    """What the Tones judge hears, for prompts in the Tones vocabulary; says so when it cannot score."""
    from pipelines.judges import tones as judge

    wanted = tones.parse_prompt(prompt)
    if not wanted:
        return "The judge cannot score this prompt: it names no waveform, pitch band, rhythm or loudness of the Tones world."
    if sample_rate != tones.SAMPLE_RATE:
        return f"The judge reads 16 kHz clips; this model makes {sample_rate} Hz."
    seen = judge.describe(samples)
    verdict = ", ".join(f"{k} {seen[k] or '?'} {'✓' if seen[k] == v else '✗ (asked ' + v + ')'}"
                        for k, v in wanted.items())
    return f"Judge: {verdict}."


def build_audio_tab(services: Services) -> AudioTab:
    # Here, not at the top: pipelines.audio_ldm imports torch and diffusers (the form's limits and defaults are
    # its request's; building the app needs them, `import studio.app` does not).
    from pipelines.audio_ldm import MAX_DURATION, AudioRequest, validate_audio_request

    choices = [e.id for e in services.registry.entries(media="audio")]
    gr.Markdown("A waveform becomes a mel spectrogram (an image of frequency over time); a latent diffusion model "
                "denoises it from noise, guided by the prompt, and a vocoder turns it back into sound.")
    how_panel(HOW, "audio-how")
    if not choices:
        gr.Markdown(f"⚠ {NO_MODEL}", elem_id="audio-no-model")
    with gr.Row():
        model = gr.Dropdown(choices, value=choices[0] if choices else None, label="Model", scale=2,
                            elem_id="audio-model")
        prompt = gr.Textbox("a high sine tone", label="Prompt", scale=3, elem_id="audio-prompt")
        negative = gr.Textbox("", label="Negative prompt", scale=2)
    start_steps, start_guidance = audio_defaults(services, choices[0] if choices else None)
    with gr.Row():
        duration = gr.Number(2.0, label=f"Duration (s, up to {MAX_DURATION:g})", elem_id="audio-duration")
        steps = gr.Slider(1, 200, value=start_steps, step=1, label="Steps", elem_id="audio-steps")
        guidance = gr.Slider(0, 15, value=start_guidance, step=0.5, label="Guidance", elem_id="audio-guidance")
        seed = gr.Number(-1, label="Seed (-1: random)", precision=0)
        run = gr.Button("Generate sound", variant="primary", elem_id="audio-generate")
    status = gr.Markdown("", elem_id="audio-status")
    with gr.Row():
        player = gr.Audio(label="Result", type="numpy", interactive=False, elem_id="audio-player")
        picture = gr.Image(label="Mel spectrogram", type="pil", interactive=False, elem_id="audio-spectrogram")
    step = gr.Slider(1, 2, value=1, step=1, label="Trajectory step", elem_id="audio-step")
    with gr.Row():
        step_picture = gr.Image(label="x0 estimate at this step", type="pil", interactive=False)
        step_player = gr.Audio(label="…as sound", type="numpy", interactive=False)
    trajectory = gr.State(None)

    def generate(model_id, text, neg, seconds, n_steps, g, seed_value, progress=gr.Progress()):
        from pipelines.previews import make_sprite

        if not model_id:
            raise gr.Error(NO_MODEL)
        try:
            req = AudioRequest(prompt=text or "", negative_prompt=neg or "", duration_s=float(seconds or 0),
                               num_inference_steps=int(n_steps), guidance_scale=float(g),
                               seed=resolve_seed(seed_value))
            validate_audio_request(req)
            progress(0.05, desc=f"loading {model_id}")
            runner = services.models.get(model_id)
            progress(0.2, desc="denoising")
            result = runner.generate(req)
        except (ValueError, ModelLoadError) as exc:
            raise gr.Error(str(exc)) from None
        mels = result.x0_mels if result.x0_mels is not None else result.mel[None]
        lo, hi = np.percentile(result.mel, 1), np.percentile(result.mel, 99.5) + 1e-3
        final = _pictures(result.mel[None], lo, hi)[0]
        x0_pictures = _pictures(mels, lo, hi)
        noisy = _pictures(runner.decode_mel(result.latents), lo, hi) if result.latents is not None else x0_pictures
        gen_id = services.gallery.save_audio(
            result.samples, spectrogram=final, params=result.params,
            fields={"family": runner.family, "model_id": model_id, "duration_s": result.seconds, "status": "ok",
                    "width": final.width, "height": final.height},
            trajectory=make_sprite([noisy, x0_pictures]), trajectory_frames=len(x0_pictures))
        note = judge_note(req.prompt, result.samples, result.sample_rate)
        text_out = (f"Done in {result.seconds:.1f} s · seed {req.seed} · {len(result.samples) / result.sample_rate:.2f} s "
                    f"of sound · saved as gallery item #{gen_id}. {note}")
        state = {"model_id": model_id, "x0": result.pred_x0, "pictures": x0_pictures}
        n = len(x0_pictures)
        return (text_out, (result.sample_rate, result.samples), final, gr.Slider(maximum=max(n, 2), value=n),
                x0_pictures[-1], state)

    finished = run.click(generate, [model, prompt, negative, duration, steps, guidance, seed],
                         [status, player, picture, step, step_picture, trajectory], api_name="generate_audio")

    def show_step(state, k):
        import torch

        if not state:
            return None, None
        k = min(max(int(k), 1), len(state["pictures"])) - 1
        runner = services.models.get(state["model_id"])
        sound = None
        if state["x0"] is not None:
            with torch.no_grad():
                mel = runner.pipe.decode_latents(state["x0"][k:k + 1].to(runner.pipe.vae.device, runner.pipe.vae.dtype))
                sound = runner.pipe.mel_spectrogram_to_waveform(mel)[0].float().numpy()
        return state["pictures"][k], (runner.sample_rate, sound) if sound is not None else None

    step.release(show_step, [trajectory, step], [step_picture, step_player], api_visibility="private")

    def model_picked(model_id):
        n, g = audio_defaults(services, model_id)
        return gr.Slider(value=n), gr.Slider(value=g)

    model.change(model_picked, [model], [steps, guidance], api_visibility="private")
    return AudioTab(finished=finished)
