"""Form values from the browser (or the API) -> typed values, with messages that say what to change."""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any


def whole_number(value: Any, name: str) -> int:
    """A form value as an int; floats must be whole, text must parse. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number (got {value!r}).")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise ValueError(f"{name} must be a whole number (got {value!r}).")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{name} must be a whole number (got {value!r}).")


def number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number (got {value!r}).")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number (got {value!r}).") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number (got {value!r}).")
    return result


def optional_number(value: Any, name: str) -> float | None:
    """Empty means "no value"; anything else must be a finite number."""
    if value is None or not str(value).strip():
        return None
    return number(value, name)


def optional_date(text: Any, name: str, end_of_day: bool = False) -> datetime | None:
    """``YYYY-MM-DD`` or empty; ``end_of_day`` gives the next midnight (an exclusive bound)."""
    if text is None or not str(text).strip():
        return None
    try:
        day = datetime.strptime(str(text).strip(), "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"{name} must be a date like 2026-01-31 (got {text!r}).") from None
    return day + timedelta(days=1) if end_of_day else day
