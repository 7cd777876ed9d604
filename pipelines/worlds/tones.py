"""The Tones world: one synthetic tone per 2 s clip, with a caption (``../shared/WORLDS.md``).

A :class:`ToneRecipe` fixes the waveform (sine, square, sawtooth, noise bursts), the pitch band
(low 110-220 Hz, mid 220-440 Hz, high 440-880 Hz), the rhythm (a steady tone, pulses at 4 per
second, a rising or a falling sweep) and the loudness (soft, loud), plus the exact frequency and
level drawn inside those classes. :func:`render` synthesises it at 16 kHz, mono, float32 in [-1, 1]:

- tonal waveforms by additive synthesis of their harmonics below Nyquist (band-limited, so no
  aliasing): square = odd harmonics at 1/k, sawtooth = all harmonics at 1/k, sine = the fundamental;
- "noise bursts": white noise shaped in the STFT domain by a one-octave log-Gaussian band centred on
  the recipe's frequency (continuous unless the rhythm pulses, so rhythm stays its own attribute);
- a sweep glides over most of its band (log-linear), a steady tone or pulse stays in the band's
  middle region; pulses gate the tone on and off at 4 Hz with 10 ms ramps;
- soft clips peak near 0.15, loud ones near 0.8.

Captions follow ``a [loudness] <pitch> <waveform> [rhythm phrase]``, e.g. "a loud high square wave
pulsing", "a low sine tone rising"; bracketed parts are dropped at random for training. Nothing here
imports torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
DURATION = 2.0
N_SAMPLES = int(SAMPLE_RATE * DURATION)
ATTRIBUTES = ("waveform", "pitch", "rhythm", "loudness")

WAVEFORMS: tuple[str, ...] = ("sine", "square", "sawtooth", "noise")
PITCHES: dict[str, tuple[float, float]] = {"low": (110.0, 220.0), "mid": (220.0, 440.0), "high": (440.0, 880.0)}
RHYTHMS: tuple[str, ...] = ("steady", "pulsing", "rising", "falling")
LOUDNESS: dict[str, float] = {"soft": 0.15, "loud": 0.8}
PULSE_HZ = 4.0
RAMP_S = 0.01

WAVEFORM_PHRASES: dict[str, str] = {"sine": "sine tone", "square": "square wave", "sawtooth": "sawtooth wave",
                                    "noise": "noise burst"}
RHYTHM_PHRASES: dict[str, str] = {"steady": "held steady", "pulsing": "pulsing", "rising": "rising",
                                  "falling": "falling"}


@dataclass(frozen=True)
class ToneRecipe:
    waveform: str
    pitch: str
    rhythm: str
    loudness: str
    freq: float  # Hz: the steady frequency, or the sweep's geometric midpoint
    level: float  # peak amplitude
    seed: int  # noise and phase

    def attributes(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ATTRIBUTES}


def sample_recipe(rng: np.random.Generator) -> ToneRecipe:
    waveform = str(rng.choice(WAVEFORMS))
    pitch = str(rng.choice(list(PITCHES)))
    rhythm = str(rng.choice(RHYTHMS))
    loudness = str(rng.choice(list(LOUDNESS)))
    lo, hi = PITCHES[pitch]
    # The middle of the band in octaves (0.3 .. 0.7 of it): judged bands are whole octaves.
    freq = float(lo * 2 ** rng.uniform(0.3, 0.7))
    level = float(LOUDNESS[loudness] * rng.uniform(0.9, 1.1))
    return ToneRecipe(waveform, pitch, rhythm, loudness, freq, level, int(rng.integers(2 ** 31)))


def frequency_track(recipe: ToneRecipe, n: int = N_SAMPLES) -> np.ndarray:
    """Instantaneous frequency (Hz) per sample: constant, or a log-linear glide over 0.6 octave each side."""
    if recipe.rhythm in ("rising", "falling"):
        octaves = np.linspace(-0.6, 0.6, n) if recipe.rhythm == "rising" else np.linspace(0.6, -0.6, n)
        lo, hi = PITCHES[recipe.pitch]
        track = recipe.freq * 2 ** octaves
        return np.clip(track, lo * 1.02, hi * 0.98)
    return np.full(n, recipe.freq)


def _envelope(recipe: ToneRecipe, n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    env = np.ones(n)
    if recipe.rhythm == "pulsing":
        env = ((t * PULSE_HZ) % 1.0 < 0.5).astype(np.float64)
    ramp = int(RAMP_S * SAMPLE_RATE)
    kernel = np.ones(ramp) / ramp
    env = np.convolve(env, kernel, mode="same")
    env[:ramp] *= np.linspace(0, 1, ramp)
    env[-ramp:] *= np.linspace(1, 0, ramp)
    return env


def _tonal(recipe: ToneRecipe, track: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(track) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)
    out = np.zeros_like(track)
    k_max = int((SAMPLE_RATE / 2 - 200) / track.max())
    for k in range(1, (1 if recipe.waveform == "sine" else k_max) + 1):
        if recipe.waveform == "square" and k % 2 == 0:
            continue
        out += np.sin(k * phase) / k
    return out


def _noise(track: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White noise through a moving one-octave (log-Gaussian, sigma 1/4 octave) band around ``track``."""
    n_fft, hop = 1024, 256
    x = rng.standard_normal(len(track) + n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = np.hanning(n_fft)
    spec = np.fft.rfft(frames * window, axis=1)
    freqs = np.fft.rfftfreq(n_fft, 1 / SAMPLE_RATE)
    centres = track[np.minimum(np.arange(len(frames)) * hop, len(track) - 1)]
    with np.errstate(divide="ignore"):
        octave = np.log2(np.maximum(freqs, 1.0)[None, :] / centres[:, None])
    spec *= np.exp(-0.5 * (octave / 0.25) ** 2)
    shaped = np.fft.irfft(spec, n=n_fft, axis=1) * window
    out = np.zeros(len(frames) * hop + n_fft)
    norm = np.zeros_like(out)
    for i, frame in enumerate(shaped):
        out[i * hop:i * hop + n_fft] += frame
        norm[i * hop:i * hop + n_fft] += window ** 2
    return (out / np.maximum(norm, 1e-3))[:len(track)]


def render(recipe: ToneRecipe) -> np.ndarray:
    """(N_SAMPLES,) float32 in [-1, 1]: the clip of ``recipe``."""
    rng = np.random.default_rng(recipe.seed)
    track = frequency_track(recipe)
    raw = _noise(track, rng) if recipe.waveform == "noise" else _tonal(recipe, track, rng)
    # Tones peak at their maximum; noise (Gaussian, crest factor ~4) is scaled by its 99.5th percentile
    # and clipped, so the level means the same loudness for both.
    ref = np.percentile(np.abs(raw), 99.5) if recipe.waveform == "noise" else np.abs(raw).max()
    raw = np.clip(raw / max(float(ref), 1e-8), -1.0, 1.0)
    return (raw * _envelope(recipe, len(raw)) * recipe.level).astype(np.float32)


def caption(recipe: ToneRecipe, rng: np.random.Generator | None = None, drop_prob: float = 0.3) -> str:
    """``a [loudness] <pitch> <waveform> [rhythm phrase]``; with ``rng``, bracketed parts drop at ``drop_prob``."""
    keep = (lambda: rng is None or rng.random() >= drop_prob)
    words = ["a"]
    if keep():
        words.append(recipe.loudness)
    words += [recipe.pitch, WAVEFORM_PHRASES[recipe.waveform]]
    if keep():
        words.append(RHYTHM_PHRASES[recipe.rhythm])
    return " ".join(words)


_WORDS = {"waveform": {"sine": "sine", "square": "square", "sawtooth": "sawtooth", "saw": "sawtooth",
                       "noise": "noise", "noisy": "noise"},
          "pitch": {"low": "low", "mid": "mid", "middle": "mid", "high": "high"},
          "rhythm": {"steady": "steady", "held": "steady", "pulsing": "pulsing", "pulse": "pulsing",
                     "pulses": "pulsing", "beat": "pulsing", "rising": "rising", "rises": "rising",
                     "falling": "falling", "falls": "falling"},
          "loudness": {"soft": "soft", "quiet": "soft", "loud": "loud"}}


def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes a prompt states (only stated keys appear)."""
    words = re.findall(r"[a-z]+", prompt.lower())
    found: dict[str, str] = {}
    for key, vocab in _WORDS.items():
        hit = next((vocab[w] for w in words if w in vocab), None)
        if hit is not None:
            found[key] = hit
    return found


def sample_dataset(seed: int, n: int, drop_prob: float = 0.3) -> list[tuple[ToneRecipe, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        recipe = sample_recipe(rng)
        out.append((recipe, caption(recipe, rng, drop_prob)))
    return out


def eval_prompts(n: int = 120, seed: int = 4321) -> list[ToneRecipe]:
    """A fixed evaluation set covering every (waveform, pitch, rhythm) combination (48) at least twice."""
    rng = np.random.default_rng(seed)
    combos = [(w, p, r) for w in WAVEFORMS for p in PITCHES for r in RHYTHMS]
    out = []
    for i in range(n):
        w, p, r = combos[i % len(combos)]
        base = sample_recipe(rng)
        out.append(ToneRecipe(w, p, r, base.loudness, float(PITCHES[p][0] * 2 ** rng.uniform(0.3, 0.7)),
                              base.level, base.seed))
    return out
