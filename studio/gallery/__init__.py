"""Studio gallery: every generation stored in SQL (via SQLAlchemy + Alembic)
with content-addressed media files on disk. UI-free and import-light.
"""

from studio.gallery.models import Base, Generation, GenerationGroup, PromptHistory
from studio.gallery.pnginfo import encode_png, read_png_params
from studio.gallery.query import GalleryQuery
from studio.gallery.repository import (
    add_generation,
    count_generations,
    delete_generation,
    distinct_values,
    get_generation,
    record_prompt,
    recent_prompts,
    search_generations,
    set_favourite,
)
from studio.gallery.service import Gallery, GalleryError
from studio.gallery.store import MediaStore

__all__ = [
    "Base",
    "Gallery",
    "GalleryError",
    "GalleryQuery",
    "Generation",
    "GenerationGroup",
    "MediaStore",
    "PromptHistory",
    "add_generation",
    "count_generations",
    "delete_generation",
    "distinct_values",
    "encode_png",
    "get_generation",
    "read_png_params",
    "record_prompt",
    "recent_prompts",
    "search_generations",
    "set_favourite",
]
