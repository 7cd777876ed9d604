"""What a text encoder actually reads of a prompt."""
from __future__ import annotations

import unicodedata
from typing import Any


def has_visible_text(text: Any) -> bool:
    """Whether ``text`` is a string with at least one visible character: not only spaces, control characters
    (NUL, tabs, newlines), zero-width or other format characters, which a text encoder reads as an empty prompt."""
    return isinstance(text, str) and any(not unicodedata.category(ch).startswith(("C", "Z")) for ch in text)


def cut_words(tokenizer: Any, text: str) -> str | None:
    """The part of ``text`` beyond the tokenizer's limit (``model_max_length`` incl. specials), or None."""
    if not text:
        return None
    limit = int(getattr(tokenizer, "model_max_length", 77))
    room = limit - 2  # start and end tokens
    try:
        enc = tokenizer(text, truncation=False, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # slow tokenizers have no offsets: decode the cut tokens instead
        ids = tokenizer(text, truncation=False, add_special_tokens=False)["input_ids"]
        return tokenizer.decode(ids[room:]).strip() if len(ids) > room else None
    offsets = enc["offset_mapping"]
    if len(offsets) <= room:
        return None
    start = offsets[room][0]
    start = max(text.rfind(" ", 0, start) + 1, 0)  # back to the start of a partly read word
    return text[start:].strip()  # the user's own words


def overflow_warning(tokenizer: Any, text: str, what: str = "prompt") -> str | None:
    cut = cut_words(tokenizer, text)
    if cut is None:
        return None
    limit = int(getattr(tokenizer, "model_max_length", 77))
    shown = cut if len(cut) <= 300 else f"{cut[:200]} ... {cut[-80:]}"
    return f"The text encoder reads {limit} tokens; these words of the {what} were cut: {shown}"
