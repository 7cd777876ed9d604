"""Image metrics for guidance studies: CLIP score, diversity, colourfulness, Shapes adherence.

- CLIP score (Hessel et al. 2021, "CLIPScore"): cosine between the prompt's text embedding and
  the image embedding of a CLIP model (the builtin shapes-clip, or any open_clip folder). We
  report the raw cosine; torchmetrics' ``CLIPScore`` is ``100 * max(cos, 0)``.
- Diversity: mean pairwise cosine distance (1 - cos) between the image embeddings of the images
  made from one prompt with different seeds (higher = more varied).
- Colourfulness (Hasler & Suesstrunk 2003, "Measuring colourfulness in natural images"):
  ``sigma_rgyb + 0.3 * mu_rgyb`` over the opponent channels rg = R - G, yb = (R + G) / 2 - B on
  0-255 pixels. Over-guided samples push colours out of range, and this number climbs.
- Shapes adherence: the Shapes judge's share of the prompt's attributes shown in the image, for
  prompts the Shapes world's grammar can read (None otherwise).
- Shapes fidelity: the judge's graded reading (:func:`pipelines.judges.shapes.grade`), the mean
  over the prompt's attributes of how close the image comes to each (1 exact, 0.5 at the judge's
  decision threshold). Adherence saturates at 1 once every attribute is right; fidelity keeps
  telling a crisp red from a roughly red.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.registry import BUILTIN_MODELS_DIR

BUILTIN_CLIP_DIR = BUILTIN_MODELS_DIR.parent / "clip" / "shapes-clip"


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {arr.shape}")
    return arr.astype(np.float64)


def colourfulness(image: Image.Image | np.ndarray) -> float:
    """Hasler & Suesstrunk's colourfulness M of an RGB image (0 for greys; ~100+ for vivid images)."""
    arr = _rgb_array(image)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def diversity(embeddings: torch.Tensor) -> float:
    """Mean pairwise cosine distance between rows (0 for fewer than two rows)."""
    if len(embeddings) < 2:
        return 0.0
    e = F.normalize(embeddings.float(), dim=-1)
    sims = e @ e.T
    n = len(e)
    off_diagonal = sims.sum() - sims.diagonal().sum()
    return float(1.0 - off_diagonal / (n * (n - 1)))


def _shapes_mean(image: Image.Image | np.ndarray, prompt: str, reading: str) -> float | None:
    """Mean of the Shapes judge's ``judge`` (right/wrong) or ``grade`` (0..1) over the prompt's attributes."""
    from pipelines.judges import shapes as judge_module
    from pipelines.worlds.shapes import parse_prompt

    wanted = parse_prompt(prompt)
    if not wanted:
        return None
    scores = getattr(judge_module, reading)(image, wanted)
    return sum(scores.values()) / len(scores)


def shapes_adherence(image: Image.Image | np.ndarray, prompt: str) -> float | None:
    """Share of the attributes ``prompt`` names that the Shapes judge sees (None: not a Shapes prompt)."""
    return _shapes_mean(image, prompt, "judge")


def shapes_fidelity(image: Image.Image | np.ndarray, prompt: str) -> float | None:
    """Mean graded closeness to the attributes ``prompt`` names (None: not a Shapes prompt)."""
    return _shapes_mean(image, prompt, "grade")


class ClipScorer:
    """Text and image embeddings of one open_clip model, with its own tokenizer and preprocessing."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, preprocess: Any, name: str) -> None:
        self.model, self.tokenizer, self.preprocess, self.name = model.eval(), tokenizer, preprocess, name

    @classmethod
    def builtin(cls, folder: Path | None = None) -> "ClipScorer":
        """The shipped shapes-clip (64x64 input; larger images are box-resized to it)."""
        from pipelines import mini_clip

        folder = Path(folder) if folder is not None else BUILTIN_CLIP_DIR
        model = mini_clip.load_clip(folder)

        def preprocess(images: Sequence[Image.Image]) -> torch.Tensor:
            arrays = [np.asarray(im.convert("RGB").resize((64, 64), Image.BOX)) for im in images]
            return mini_clip.images_to_tensor(np.stack(arrays))

        return cls(model, mini_clip.get_tokenizer(), preprocess, f"builtin/{folder.name}")

    @classmethod
    def from_open_clip_folder(cls, folder: Path) -> "ClipScorer":
        """Any open_clip model saved as a folder (``open_clip_config.json`` + weights)."""
        import open_clip

        model, transform = open_clip.create_model_from_pretrained(f"local-dir:{Path(folder).resolve()}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{Path(folder).resolve()}")

        def preprocess(images: Sequence[Image.Image]) -> torch.Tensor:
            return torch.stack([transform(im.convert("RGB")) for im in images])

        return cls(model.float(), tokenizer, preprocess, f"open_clip/{Path(folder).name}")

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        """Unit text embedding (D,) of one prompt."""
        return F.normalize(self.model.encode_text(self.tokenizer([prompt])).float(), dim=-1)[0]

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unit image embeddings (N, D)."""
        return F.normalize(self.model.encode_image(self.preprocess(list(images))).float(), dim=-1)

    def clip_scores(self, prompt: str, images: Sequence[Image.Image]) -> list[float]:
        """Cosine between the prompt and each image."""
        return (self.image_embeddings(images) @ self.text_embedding(prompt)).tolist()
