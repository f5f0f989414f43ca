"""`BodyLimit`: request bodies above the limit answered with 413, so that a client that writes its whole body
before reading (most HTTP clients) still reads the 413 rather than a reset connection: the body is read and
discarded up to `DRAIN_CAP`, then answered; only a body beyond that cap is cut off."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deploycheck.server.protocol import RequestError

DRAIN_CAP = 256 * 1024 * 1024  # bytes of an oversize body read and discarded before the 413


class BodyLimit:
    """ASGI middleware refusing request bodies above `max_bytes` with 413: at once when Content-Length says so,
    otherwise while the body streams in (uvicorn sets no limit of its own)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.inference_server: Any = None  # the state behind the app, for the launcher's SIGTERM drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body exceeds the limit of {self.max_bytes} bytes"
        headers = dict(scope.get("headers", []))
        announced = headers.get(b"content-length", b"")
        if announced.isdigit() and int(announced) > self.max_bytes:
            if headers.get(b"expect", b"").lower() != b"100-continue":  # a client waiting for 100 sends nothing
                await _discard_body(receive, 0)
            await send_error(send, 413, f"request body of {int(announced)} bytes exceeds the limit of "
                                        f"{self.max_bytes} bytes")
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(413, f"request body exceeds the limit of {self.max_bytes} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _discard_body(receive, received)
                await send_error(send, 413, too_large)


async def _discard_body(receive: Receive, received: int) -> None:
    """Read what is left of a refused body (up to `DRAIN_CAP` in all), so the client gets to read the answer."""
    while received <= DRAIN_CAP:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class _TooLarge(RequestError):
    """Raised while reading a body past the limit: endpoints answer it as a 413 like any refused request."""


async def send_error(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
