"""A request-body cap per path that answers 413 with what the limit is and what to send instead.

Checked from Content-Length before anything is read, and again while a body (chunked or not) is read, so no more
than the cap is ever buffered. FastAPI's own `max_body_size` (Starlette's RequestBodyLimitMiddleware) does the same
counting, but replaces every response to a body whose Content-Length is over the cap with a plain-text "Content Too
Large" that no handler can reword (FastAPI 0.165, Starlette 1.10), so a client is not told the limit or what to do.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# (what the limit covers, what to do) in a 413, by path
BODY_ADVICE = {"/predict": ("one record needs", "send one record per call (POST /predict/batch scores many)"),
               "/predict/batch": ("a full batch needs", "send fewer or shorter records")}
OTHER_BODY = ("this endpoint takes", "send a smaller body")


def body_too_large(path: str, limit: int, declared: int | None = None) -> str:
    """The 413 detail of a body over its path's limit: the limit, and what to send instead."""
    what, advice = BODY_ADVICE.get(path, OTHER_BODY)
    if declared is not None:
        return f"the body has {declared:,} bytes, more than the {limit:,} {what}; {advice}"
    return f"the body is larger than the {limit:,} bytes {what}; {advice}"


class BodyLimit:
    """ASGI middleware: at most `limits[path]` bytes of request body (`default` for other paths), else 413."""

    def __init__(self, app: ASGIApp, limits: dict[str, int], default: int) -> None:
        self.app, self.limits, self.default = app, limits, default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.limits.get(path, self.default)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            response = JSONResponse({"detail": body_too_large(path, limit, int(declared))}, status_code=413)
            await response(scope, receive, send)
            return
        size = 0

        async def limited() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:   # raised inside the route's body read: FastAPI answers it as this 413
                    raise HTTPException(status_code=413, detail=body_too_large(path, limit))
            return message

        await self.app(scope, limited, send)
