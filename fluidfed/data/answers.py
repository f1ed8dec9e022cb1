"""The data path's error answer, as its clients read it: `{"status", "reason"}` with the
status; a 401 also names the realm whose credential it asks for. The cache workers, the
agent's API and the sidecar's status server answer so."""

from __future__ import annotations

from aiohttp import web


def answer(status: int, reason: str, *, realm: str = "") -> web.Response:
    """`reason` with `status`; with `realm` (a 401), the challenge for its Bearer token."""
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}"'} if realm else None
    return web.json_response({"status": status, "reason": reason}, status=status, headers=challenge)
