"""Gallery tab filter values -> GalleryQuery, with clear messages for bad input."""
from datetime import datetime

import pytest

from studio.tabs.gallery import make_query

EMPTY = dict(text="", model_id="", family="", media_type="", g_min="", g_max="", date_from="", date_to="",
             favourites=False, page=1)


def _query(**changes):
    return make_query(**(EMPTY | changes))


def test_empty_filters_mean_everything():
    q = _query()
    assert (q.model_id, q.guidance_min, q.created_after, q.created_before, q.page) == (None, None, None, None, 1)


def test_filters_are_parsed():
    q = _query(g_min="2", g_max=" 7.5 ", date_from="2026-01-01", date_to="2026-01-31", model_id="builtin/x")
    assert (q.guidance_min, q.guidance_max, q.model_id) == (2.0, 7.5, "builtin/x")
    assert q.created_after == datetime(2026, 1, 1) and q.created_before == datetime(2026, 2, 1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"g_min": "high"}, "Minimum guidance must be a number"),
        ({"g_max": "nan"}, "finite"),
        ({"g_min": "9", "g_max": "1"}, "guidance"),
        ({"date_from": "31/01/2026"}, "From date must be a date like"),
        ({"date_to": "yesterday"}, "To date"),
    ],
)
def test_bad_filters_are_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        _query(**changes)
