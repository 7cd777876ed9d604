"""Cross-attention maps: where each prompt token steers the image.

In a text-conditioned UNet every ``attn2`` layer is cross-attention: image positions are the
queries, the text encoder's token states are the keys and values, and
``softmax(Q K^T / sqrt(d))`` gives, for each image position, a distribution over the prompt's
tokens (Rombach et al. 2022, section 3.3; Hertz et al. 2022, "Prompt-to-Prompt Image Editing with
Cross Attention Control", which reads these maps). This module records those probabilities
through diffusers' attention-processor interface (``set_attn_processor``): while recording, the
cross-attention layers run :class:`RecordingAttnProcessor`, a copy of diffusers' ``AttnProcessor``
that also hands the probabilities to a :class:`AttentionRecorder`; the original processors are put
back afterwards. With no recorder nothing is installed, so a run is exactly the unrecorded run.

Stored maps are the raw probabilities averaged over heads and over the layers of one spatial
resolution, for the conditional half of a classifier-free-guidance batch: at every position they
sum to 1 over all the text encoder's positions (start, words, end, padding).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

DEFAULT_PROMPT = "a red circle in the top left on a white background"


class RecordingAttnProcessor:
    """diffusers' ``AttnProcessor`` (explicit softmax) that reports the attention probabilities.

    At steps the recorder does not want, it defers to the layer's original processor, so those
    steps compute exactly what an unrecorded run computes."""

    def __init__(self, recorder: "AttentionRecorder", original: Any):
        self.recorder, self.original = recorder, original

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is None or not self.recorder.wants_step():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)  # (B, N, C)
        batch, text_len, _ = encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, text_len, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B*heads, K, d)
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)  # (B*heads, N, d)
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, N, K), rows sum to 1
        self.recorder.add(probs.view(batch, attn.heads, *probs.shape[1:]))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))  # (B, N, C)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@dataclass
class AttentionRecorder:
    """Collects cross-attention probabilities during one run.

    ``steps``: the 0-based denoising steps to record (None: all). ``num_images``: the batch size
    the user asked for; a batch twice that size is a guidance batch ``[unconditional, conditional]``
    (diffusers' order) and only its conditional half is kept."""

    num_images: int = 1
    steps: Optional[Sequence[int]] = None
    step: int = 0  # the step now running (advanced by the pipeline's step callback)
    # (step, number of query positions) -> [sum over layers of the head-averaged probs (B, N, K), layer count]
    _sums: dict[tuple[int, int], list[Any]] = field(default_factory=dict)

    def wants_step(self) -> bool:
        return self.steps is None or self.step in self.steps

    def add(self, probs: torch.Tensor) -> None:
        """``probs``: (batch, heads, N, K) softmax probabilities of one layer at the current step."""
        if probs.shape[0] == 2 * self.num_images:
            probs = probs[self.num_images:]  # the conditional half of [uncond, cond]
        mean = probs.float().mean(dim=1).cpu()  # (B, N, K): averaged over heads
        slot = self._sums.setdefault((self.step, mean.shape[1]), [torch.zeros_like(mean), 0])
        slot[0] += mean
        slot[1] += 1

    def step_done(self, index: int) -> None:
        self.step = index + 1

    def maps(self, latent_hw: tuple[int, int], token_ids: Sequence[int], tokens: Sequence[str],
             words: slice) -> "AttentionMaps":
        """The recorded maps, (steps, B, K, h, w) per resolution (layers averaged)."""
        if not self._sums:
            raise ValueError("Nothing was recorded: the model has no cross-attention layers.")
        steps = sorted({s for s, _ in self._sums})
        sizes = sorted({n for _, n in self._sums}, reverse=True)
        per_res: dict[tuple[int, int], torch.Tensor] = {}
        layers: dict[tuple[int, int], int] = {}
        for n in sizes:
            hw = _grid_of(n, latent_hw)
            stacked = []
            for s in steps:
                total, count = self._sums[(s, n)]
                b, _, k = total.shape
                stacked.append((total / count).transpose(1, 2).reshape(b, k, *hw))  # (B, K, h, w)
                layers[hw] = count
            per_res[hw] = torch.stack(stacked)  # (steps, B, K, h, w)
        return AttentionMaps(steps=tuple(steps), maps=per_res, layers=layers, token_ids=tuple(token_ids),
                             tokens=tuple(tokens), words=words)


def _grid_of(positions: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a layer with ``positions`` queries in a UNet whose input latent is ``latent_hw``."""
    h, w = latent_hw
    factor = round(math.sqrt(h * w / positions))
    if factor < 1 or (h // factor) * (w // factor) != positions:
        raise ValueError(f"Cannot place {positions} attention positions on a {h}x{w} latent.")
    return h // factor, w // factor


@dataclass(frozen=True)
class AttentionMaps:
    """Cross-attention of one run: ``maps[(h, w)]`` is (steps, B, K, h, w); at each position the K
    values are the softmax over the text encoder's K positions (sum 1)."""

    steps: tuple[int, ...]  # the recorded 0-based steps
    maps: dict[tuple[int, int], torch.Tensor]
    layers: dict[tuple[int, int], int]  # how many cross-attention layers each resolution averages
    token_ids: tuple[int, ...]  # the text encoder's K input ids
    tokens: tuple[str, ...]  # their readable forms
    words: slice  # the prompt's own tokens (after the start token, before the end token)

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        return sorted(self.maps, key=lambda hw: -hw[0] * hw[1])

    @property
    def prompt_tokens(self) -> list[tuple[int, str]]:
        """(position, text) of each prompt token: one map each."""
        return [(i, self.tokens[i]) for i in range(len(self.tokens))[self.words]]

    def token_maps(self, resolution: tuple[int, int], step: Optional[int] = None, image: int = 0) -> torch.Tensor:
        """(T, h, w) maps of the prompt's T tokens at one recorded step (None: mean over recorded steps)."""
        per_step = self.maps[resolution][:, image]  # (steps, K, h, w)
        chosen = per_step.mean(0) if step is None else per_step[self.steps.index(step)]
        return chosen[self.words]

    def special_share(self, resolution: tuple[int, int], step: Optional[int] = None, image: int = 0) -> float:
        """Fraction of attention (averaged over positions) that goes to start/end/padding, not prompt words."""
        per_step = self.maps[resolution][:, image]
        chosen = per_step.mean(0) if step is None else per_step[self.steps.index(step)]  # (K, h, w)
        return float(1.0 - chosen[self.words].sum(0).mean())

    def find_token(self, word: str) -> int:
        """Index among :attr:`prompt_tokens` of the first token that spells ``word``."""
        for k, (_, text) in enumerate(self.prompt_tokens):
            if text == word.lower():
                return k
        raise ValueError(f"{word!r} is not a token of the prompt ({', '.join(t for _, t in self.prompt_tokens)}).")


def has_cross_attention(unet: torch.nn.Module) -> bool:
    return any(name.endswith("attn2.processor") for name in getattr(unet, "attn_processors", {}))


@contextlib.contextmanager
def recording(unet: torch.nn.Module, recorder: Optional[AttentionRecorder]) -> Iterator[None]:
    """Run the block with ``recorder`` on every cross-attention layer of ``unet``; processors are
    restored afterwards, also on errors. ``recorder`` None: nothing changes."""
    if recorder is None:
        yield
        return
    originals = dict(getattr(unet, "attn_processors", {}))
    if not any(name.endswith("attn2.processor") for name in originals):
        raise ValueError("This model has no cross-attention layers to record (text reaches it another way).")
    unet.set_attn_processor({name: RecordingAttnProcessor(recorder, proc) if name.endswith("attn2.processor")
                             else proc for name, proc in originals.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(originals)


def readable_tokens(tokenizer: Any, prompt: str) -> tuple[list[int], list[str], slice]:
    """The text encoder's input ids for ``prompt`` (padded as the pipeline pads), readable token texts,
    and the slice of the prompt's own tokens."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    texts = [t.replace("</w>", "") for t in tokenizer.convert_ids_to_tokens(ids)]
    eos = tokenizer.eos_token_id
    end = ids.index(eos, 1) if eos in ids[1:] else len(ids)
    return list(ids), texts, slice(1, end)


def peak_quadrant(heatmap: torch.Tensor) -> str:
    """"top left" / "top right" / "bottom left" / "bottom right": the quadrant of the (h, w) map's
    highest cell (y down; a cell on the middle line of an odd grid counts to the top / left)."""
    h, w = heatmap.shape
    row, col = divmod(int(torch.argmax(heatmap)), w)
    return f"{'top' if row + 0.5 <= h / 2 else 'bottom'} {'left' if col + 0.5 <= w / 2 else 'right'}"


# A perceptually ordered dark-to-bright colour ramp (inferno-like anchors) for heatmaps.
_RAMP = torch.tensor([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                      [250, 193, 39], [252, 255, 164]], dtype=torch.float32)


def colourise(values: torch.Tensor) -> torch.Tensor:
    """(h, w) values in [0, 1] -> (h, w, 3) uint8 colours along the ramp."""
    pos = values.clamp(0, 1) * (len(_RAMP) - 1)
    low = pos.floor().long().clamp(max=len(_RAMP) - 2)
    frac = (pos - low).unsqueeze(-1)
    return (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).round().to(torch.uint8)


def heatmap_overlay(image: "Image.Image", heat: torch.Tensor, low: float, high: float, size: int = 256,
                    alpha: float = 0.6) -> "Image.Image":
    """``heat`` (h, w) scaled from [low, high] to the colour ramp, upsampled to ``size`` and blended over
    ``image`` (nearest-neighbour, so each attention cell stays visible as a block)."""
    from PIL import Image

    scaled = (heat - low) / max(high - low, 1e-12)
    colours = Image.fromarray(colourise(scaled).numpy()).resize((size, size), Image.NEAREST)
    base = image.convert("RGB").resize((size, size), Image.NEAREST)
    return Image.blend(base, colours, alpha)
