"""Refuse cross-site requests that would change something (cross-site request forgery).

Any web page a person visits can make their browser send a request to ``http://127.0.0.1:7860``: a form post, or
a ``fetch(..., {mode: "no-cors"})`` whose answer the page cannot read but whose *effect* (a generation, a training
run, a deleted gallery item) happens all the same. Gradio's CORS middleware only withholds the answer. This ASGI
middleware refuses, with 403 and before any handler runs, every state-changing request (POST, PUT, PATCH, DELETE)
whose ``Origin`` (or, without one, ``Referer``) names another site than the one the request was sent to (its
``Host``). Browsers always send ``Origin`` on cross-origin posts; requests without either header (scripts,
``gradio_client``, curl) are not cross-site requests from a browser and pass.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_of(url: str) -> tuple[str, int] | None:
    """(host, port) of an Origin/Referer value; None for "null" and anything unparsable."""
    try:
        parts = urlsplit(url.strip())
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            return None
        return parts.hostname.lower(), parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        return None


def _host_of(host_header: str, scheme: str) -> tuple[str, int] | None:
    return _origin_of(f"{scheme}://{host_header}") if host_header else None


def same_site(origin: str, host_header: str, scheme: str = "http") -> bool:
    """Whether a request carrying ``origin`` (an Origin or Referer value) comes from the site named by ``Host``."""
    a, b = _origin_of(origin), _host_of(host_header, scheme)
    return a is not None and b is not None and a == b


class OriginGuard:
    """ASGI middleware: 403 for state-changing requests from another origin (see the module docstring)."""

    def __init__(self, app: Callable[..., Awaitable[Any]]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") == "http" and scope.get("method", "GET").upper() in STATE_CHANGING:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            claimed = headers.get("origin") or headers.get("referer")
            if claimed is not None and not same_site(claimed, headers.get("host", ""), scope.get("scheme", "http")):
                await self._refuse(send, claimed)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send: Callable, claimed: str) -> None:
        body = json.dumps({"detail": f"Cross-site request refused: a page at {claimed[:200]!r} may not start, "
                                     "change or delete anything in this studio."}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
