"""Text-to-audio latent diffusion (AudioLDM, Liu et al. 2023) with its denoising trajectory.

An AudioLDM folder (diffusers ``AudioLDMPipeline``: a mel-spectrogram VAE, a CLAP text encoder whose
projected embedding conditions the UNet, a DDIM-family scheduler and a HiFi-GAN vocoder) loads through
the registry as family ``audio_ldm``. :meth:`AudioLDM.generate` runs the pipeline itself, starting from
noise drawn from the request's seed, and records every step: the latent x_t and the x0 estimate
(from the guided noise prediction, captured by a forward hook on the UNet, and the scheduler's own
conventions through :func:`pipelines.x0.predict_x0`), each x0 decoded by the VAE to the mel
spectrogram it stands for. The last x0 is the final latent up to the scheduler's last step.

The vocoder is either a real AudioLDM's ``SpeechT5HifiGan`` or :class:`GriffinLimVocoder`, which has no weights:
its ``vocoder/config.json`` names the mel analysis it inverts (sample rate, n_fft, hop, mel bands, Griffin-Lim
iterations), and ``model_index.json`` names it ``["pipelines.audio_ldm", "GriffinLimVocoder"]``. The builtin
tones-ldm uses it. It is built from its config here and handed to ``AudioLDMPipeline.from_pretrained``; once
this module is imported, diffusers also loads such a folder by itself (``AudioLDMPipeline.from_pretrained(path)``).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
from diffusers import ModelMixin  # noqa: F401  (also lets diffusers check a passed GriffinLimVocoder's type)
from diffusers.configuration_utils import ConfigMixin, register_to_config

from .devices import DeviceSpec
from .events import CancelFlag
from .registry import ModelEntry, ModelLoadError, read_model_index
from .x0 import predict_x0
from .text_limits import has_visible_text

MAX_DURATION = 30.0
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0


@dataclass(frozen=True)
class AudioRequest:
    prompt: str
    negative_prompt: str = ""
    duration_s: float = 2.0
    num_inference_steps: int = 25
    guidance_scale: float = 2.5  # classifier-free guidance; <= 1 turns it off
    seed: int = 0
    capture_trajectory: bool = True

    def params(self) -> dict[str, Any]:
        return asdict(self)


def validate_audio_request(req: AudioRequest, max_duration: float = MAX_DURATION) -> None:
    """ValueError with a message saying what to change."""
    if not has_visible_text(req.prompt):
        raise ValueError("Type a prompt describing the sound.")
    d = req.duration_s
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or not 0.1 <= d <= max_duration:
        raise ValueError(f"Duration must be from 0.1 to {max_duration:g} seconds (got {d!r}).")
    n = req.num_inference_steps
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_STEPS:
        raise ValueError(f"Steps must be a whole number from 1 to {MAX_STEPS} (got {n!r}).")
    g = req.guidance_scale
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or not 0 <= g <= MAX_GUIDANCE:
        raise ValueError(f"Guidance must be a number from 0 to {MAX_GUIDANCE:g} (got {g!r}).")
    if isinstance(req.seed, bool) or not isinstance(req.seed, int) or not 0 <= req.seed < 2 ** 63:
        raise ValueError(f"Seed must be a whole number from 0 to 2^63-1 (got {req.seed!r}).")


@dataclass
class AudioResult:
    samples: np.ndarray  # (n,) float32
    sample_rate: int
    mel: np.ndarray  # (frames, n_mels): the final mel spectrogram the vocoder read
    params: dict[str, Any]
    seconds: float
    timesteps: tuple[float, ...] = ()
    latents: Optional[torch.Tensor] = None  # (steps, C, h, w): x_t after each step
    pred_x0: Optional[torch.Tensor] = None  # (steps, C, h, w)
    x0_mels: Optional[np.ndarray] = None  # (steps, frames, n_mels): each x0 decoded


class GriffinLimVocoder(ModelMixin, ConfigMixin):
    """A vocoder without weights: log-mel (B, frames, n_mels) -> waveform (B, frames * hop) by Griffin-Lim
    (Griffin & Lim 1984; librosa's NNLS mel inversion then ``n_iter`` iterations of phase recovery, random phases
    drawn from a fixed seed, so a spectrogram always gives the same sound). A drop-in for ``SpeechT5HifiGan`` in
    ``AudioLDMPipeline``: its config also carries the names the pipeline reads, ``sampling_rate``,
    ``upsample_rates`` (their product is the hop) and ``model_in_dim`` (the number of mel bands)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, sampling_rate: int = 16_000, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 128,
                 fmin: float = 0.0, fmax: float = 8000.0, floor: float = 1e-5, n_iter: int = 32,
                 upsample_rates: Optional[list[int]] = None, model_in_dim: Optional[int] = None) -> None:
        super().__init__()
        if sampling_rate != 16_000:
            raise ValueError(f"GriffinLimVocoder: sampling_rate must be 16000 (the studio's audio rate), got {sampling_rate}.")
        if upsample_rates is not None and int(np.prod(upsample_rates)) != hop_length:
            raise ValueError(f"GriffinLimVocoder: upsample_rates {upsample_rates} must multiply to hop_length {hop_length}.")
        if model_in_dim is not None and model_in_dim != n_mels:
            raise ValueError(f"GriffinLimVocoder: model_in_dim {model_in_dim} must equal n_mels {n_mels}.")
        if not 1 <= n_iter <= 1000 or n_fft < hop_length or n_mels < 1:
            raise ValueError("GriffinLimVocoder: n_iter must be 1-1000, n_fft at least hop_length, n_mels at least 1.")
        self.register_to_config(upsample_rates=[hop_length], model_in_dim=n_mels)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # gives the module a device and dtype

    @classmethod
    def from_pretrained(cls, folder: Any, **unused: Any) -> "GriffinLimVocoder":
        """Build from ``<folder>/config.json`` (there are no weights; loading options are irrelevant)."""
        config = cls.load_config(folder)
        if config.get("_class_name") != cls.__name__:
            raise ValueError(f"{folder}/config.json describes {config.get('_class_name')!r}, not {cls.__name__}.")
        return cls.from_config(config)

    def save_pretrained(self, folder: Any, **unused: Any) -> None:
        self.save_config(folder)

    def mel_config(self) -> Any:
        from .audio import MelConfig

        c = self.config
        return MelConfig(n_mels=c.n_mels, n_fft=c.n_fft, hop=c.hop_length, fmin=c.fmin, fmax=c.fmax, floor=c.floor)

    @torch.no_grad()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        from .audio import griffin_lim

        if mel.dim() != 3 or mel.shape[-1] != self.config.n_mels:
            raise ValueError(f"GriffinLimVocoder reads (batch, frames, {self.config.n_mels}) log-mels, got {tuple(mel.shape)}.")
        cfg, n = self.mel_config(), mel.shape[1] * self.config.hop_length
        logmels = np.nan_to_num(mel.detach().float().cpu().numpy())
        waves = [griffin_lim(m.T, n_samples=n, cfg=cfg, n_iter=self.config.n_iter) for m in logmels]
        return torch.from_numpy(np.stack(waves))  # (B, samples) float32


def _vocoder_override(folder: Any) -> dict[str, Any]:
    """``{"vocoder": GriffinLimVocoder}`` for a folder whose vocoder is Griffin-Lim, else nothing (diffusers
    loads a SpeechT5HifiGan itself)."""
    spec = read_model_index(folder).get("vocoder")
    if isinstance(spec, list) and len(spec) == 2 and spec[1] == GriffinLimVocoder.__name__:
        return {"vocoder": GriffinLimVocoder.from_pretrained(f"{folder}/vocoder")}
    return {}


class _UNetTap:
    """Forward hook on the UNet: keeps the latest (guided) noise prediction of each call."""

    def __init__(self, guidance: float) -> None:
        self.guidance, self.noise_pred = guidance, None

    def __call__(self, module, args, kwargs, output) -> None:
        out = output[0] if isinstance(output, tuple) else output.sample
        if self.guidance > 1.0:
            uncond, cond = out.chunk(2)
            out = uncond + self.guidance * (cond - uncond)
        self.noise_pred = out.detach()


class AudioLDM:
    family = "audio_ldm"

    def __init__(self, pipe: Any, model_id: str) -> None:
        self.pipe, self.model_id = pipe, model_id

    @classmethod
    def load(cls, entry: ModelEntry, device: DeviceSpec) -> "AudioLDM":
        from diffusers import AudioLDMPipeline

        try:
            pipe = AudioLDMPipeline.from_pretrained(entry.path, use_safetensors=True, torch_dtype=device.dtype,
                                                    **_vocoder_override(entry.path))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{entry.id}: could not load the AudioLDM folder {entry.path} ({exc})") from exc
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device.device), entry.id)

    @property
    def sample_rate(self) -> int:
        return int(self.pipe.vocoder.config.sampling_rate)

    def latent_shape(self, duration_s: float) -> tuple[int, int, int]:
        """(C, h, w) of the latent for a clip of ``duration_s`` (AudioLDM's own arithmetic)."""
        pipe = self.pipe
        hop = float(np.prod(pipe.vocoder.config.upsample_rates)) / pipe.vocoder.config.sampling_rate
        frames = int(duration_s / hop)
        f = pipe.vae_scale_factor
        frames = int(math.ceil(frames / f)) * f
        return pipe.unet.config.in_channels, frames // f, pipe.vocoder.config.model_in_dim // f

    @torch.no_grad()
    def decode_mel(self, latents: torch.Tensor) -> np.ndarray:
        """(B, frames, n_mels) mel spectrograms of latents (B, C, h, w)."""
        mel = self.pipe.decode_latents(latents.to(self.pipe.vae.device, self.pipe.vae.dtype))
        return mel[:, 0].float().cpu().numpy()

    def generate(self, req: AudioRequest, on_step: Any = None, cancel: Optional[CancelFlag] = None) -> AudioResult:
        """``on_step`` is accepted for the image families' calling convention; the audio tab reads the result."""
        if not isinstance(req, AudioRequest):
            raise ValueError(f"{self.model_id} makes sound, not images: use the Audio tab.")
        validate_audio_request(req)
        pipe, t0 = self.pipe, time.perf_counter()
        device = pipe.unet.device
        shape = (1, *self.latent_shape(req.duration_s))
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(req.seed)).to(device, pipe.unet.dtype)
        tap = _UNetTap(req.guidance_scale)
        handle = pipe.unet.register_forward_hook(tap, with_kwargs=True)
        steps: list[tuple[float, torch.Tensor, torch.Tensor]] = []
        state = {"x_t": noise * pipe.scheduler.init_noise_sigma}

        def on_step(i: int, t: Any, latents: torch.Tensor) -> None:
            if req.capture_trajectory:
                x0 = predict_x0(pipe.scheduler, tap.noise_pred, t, state["x_t"])
                steps.append((float(t), latents[0].detach().float().cpu(), x0[0].cpu()))
            state["x_t"] = latents
            if cancel is not None:
                cancel.raise_if_set(i + 1)

        try:
            out = pipe(req.prompt, negative_prompt=req.negative_prompt or None, audio_length_in_s=req.duration_s,
                       num_inference_steps=req.num_inference_steps, guidance_scale=req.guidance_scale,
                       latents=noise, callback=on_step, callback_steps=1, output_type="np")
        finally:
            handle.remove()
        samples = np.asarray(out.audios[0], np.float32)[: int(round(req.duration_s * self.sample_rate))]
        final = self.decode_mel(state["x_t"])[0]
        result = AudioResult(samples, self.sample_rate, final, {**req.params(), "model_id": self.model_id,
                                                                 "family": self.family}, time.perf_counter() - t0)
        if steps:
            result.timesteps = tuple(s[0] for s in steps)
            result.latents = torch.stack([s[1] for s in steps])
            result.pred_x0 = torch.stack([s[2] for s in steps])
            result.x0_mels = self.decode_mel(result.pred_x0)
        return result
