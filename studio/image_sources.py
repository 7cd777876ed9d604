"""Where an "inside the model" view gets its picture: an upload, a gallery item, or a Shapes-world sample.

UI-free (no gradio): handlers call :func:`pick_image` and turn its ``ValueError`` into a ``gr.Error``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from PIL import Image

from pipelines.worlds import shapes

from .forms import whole_number
from .gallery import Gallery

SOURCES = ("World sample", "Upload", "Gallery item")
MAX_WORLD_SEED = 2**32 - 1


def world_sample(seed: Any) -> tuple[Image.Image, str]:
    """The Shapes-world image drawn from ``seed`` (64x64 RGB) and its full caption."""
    value = whole_number(seed, "World seed")
    if not 0 <= value <= MAX_WORLD_SEED:
        raise ValueError(f"World seed must be a whole number from 0 to {MAX_WORLD_SEED} (got {value}).")
    recipe = shapes.sample_recipe(np.random.default_rng(value), holdout="include")
    return shapes.render(recipe), shapes.caption(recipe)


def pick_image(gallery: Gallery, source: Any, upload: Optional[Image.Image], gen_id: Any,
               world_seed: Any) -> tuple[Image.Image, str]:
    """The RGB image the user chose and a short description of where it came from.

    Raises ``ValueError`` with a message saying what to give instead."""
    if source == "Upload":
        if upload is None:
            raise ValueError("Upload an image first (or choose another source).")
        if not isinstance(upload, Image.Image):
            raise ValueError("The upload is not an image.")
        return upload.convert("RGB"), "uploaded image"
    if source == "Gallery item":
        if gen_id is None or (isinstance(gen_id, str) and not gen_id.strip()):
            raise ValueError("Type a gallery item number (shown in the Gallery tab's detail view).")
        return gallery.load_image(gen_id), f"gallery item #{int(gen_id)}"
    if source == "World sample":
        image, text = world_sample(world_seed)
        return image, f"Shapes world sample: {text}"
    raise ValueError(f"Choose an image source: {', '.join(SOURCES)} (got {source!r}).")
