"""Audio as an image: log-mel spectrograms, Griffin-Lim back to sound, spectrogram pictures, WAV files
that carry their parameters.

A waveform becomes a (mel) spectrogram, an image-like array a latent diffusion model can denoise, and
a vocoder turns it back into sound (AudioLDM, Riffusion). The builtin audio model's vocoder is
Griffin-Lim (librosa: iterative phase recovery from magnitudes); a real AudioLDM folder brings its
HiFi-GAN. Measured on the Tones world (48 ground-truth clips, 80 mels, n_fft 1024, hop 128, 32
iterations): the audio judge still reads rhythm and loudness 100%, pitch band 98%, waveform 94% after
the mel -> Griffin-Lim round trip, about 0.9 s a clip on 2 CPU cores (64 mels, hop 160: 94% / 88%).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from PIL import Image

SAMPLE_RATE = 16_000
META_KEY = "comment"  # the WAV INFO field (ICMT) that holds the studio's JSON parameters
META_PREFIX = "studio:"


@dataclass(frozen=True)
class MelConfig:
    n_mels: int = 80
    n_fft: int = 1024
    hop: int = 128
    fmin: float = 0.0
    fmax: float = 8000.0
    floor: float = 1e-5  # log(clamp(magnitude, floor)), as AudioLDM

    def frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop


def log_mel(y: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """(n_mels, frames) float32 natural-log mel magnitudes of a 16 kHz waveform."""
    import librosa

    mel = librosa.feature.melspectrogram(y=np.asarray(y, np.float32), sr=SAMPLE_RATE, n_fft=cfg.n_fft,
                                         hop_length=cfg.hop, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
                                         power=1.0)
    return np.log(np.clip(mel, cfg.floor, None)).astype(np.float32)


def griffin_lim(logmel: np.ndarray, n_samples: Optional[int] = None, cfg: MelConfig = MelConfig(),
                n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """A waveform whose log-mel magnitudes approximate ``logmel`` (phase recovered by Griffin-Lim, starting
    from random phases drawn with ``seed``, so the same spectrogram always gives the same sound)."""
    import librosa

    # librosa.feature.inverse.mel_to_audio, in its two steps, so the phases' seed can be given
    stft = librosa.feature.inverse.mel_to_stft(np.exp(np.asarray(logmel, np.float32)), sr=SAMPLE_RATE,
                                               n_fft=cfg.n_fft, power=1.0, fmin=cfg.fmin, fmax=cfg.fmax)
    y = librosa.griffinlim(stft, n_iter=n_iter, hop_length=cfg.hop, n_fft=cfg.n_fft, random_state=seed)
    if n_samples is not None:
        y = np.pad(y, (0, max(0, n_samples - len(y))))[:n_samples]
    return np.clip(y, -1.0, 1.0).astype(np.float32)


# A perceptual colour map (magma-like), as anchor colours interpolated into a 256-entry table.
_ANCHORS = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
                     (250, 193, 39), (252, 255, 164)], np.float32)
_LUT = np.stack([np.interp(np.linspace(0, len(_ANCHORS) - 1, 256), np.arange(len(_ANCHORS)), _ANCHORS[:, c])
                 for c in range(3)], axis=1).astype(np.uint8)


def spectrogram_image(logmel: np.ndarray, vmin: float = np.log(1e-5), vmax: float = np.log(10.0),
                      height: int = 128) -> Image.Image:
    """The spectrogram as a picture: low frequencies at the bottom, one column per frame."""
    x = (np.asarray(logmel, np.float32) - vmin) / (vmax - vmin)
    idx = np.clip(np.nan_to_num(x) * 255, 0, 255).astype(np.uint8)[::-1]
    image = Image.fromarray(_LUT[idx])
    return image.resize((image.width, height), Image.NEAREST) if height else image


def wav_bytes(y: np.ndarray, params: Optional[dict[str, Any]] = None) -> bytes:
    """16-bit PCM WAV of ``y``, with ``params`` as JSON in the INFO comment (ICMT) field."""
    import soundfile as sf

    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16", format="WAV") as f:
        if params is not None:
            f.comment = META_PREFIX + json.dumps(params, sort_keys=True, default=str)
            f.software = "multimodal-studio"
        f.write(np.clip(np.nan_to_num(np.asarray(y, np.float32)), -1.0, 1.0))
    return buffer.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int, Optional[dict[str, Any]]]:
    """(samples float32, sample rate, the studio's parameters or None); ValueError for a file that is not WAV."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            y = f.read(dtype="float32", always_2d=True).mean(axis=1)
            comment, rate = f.comment, f.samplerate
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ValueError(f"not a sound file this studio can read ({exc})") from None
    params = None
    if comment and comment.startswith(META_PREFIX):
        try:
            params = json.loads(comment[len(META_PREFIX):])
        except ValueError:
            params = None
    return y, rate, params
