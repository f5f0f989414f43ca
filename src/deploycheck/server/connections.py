"""`GuardedProtocol`: uvicorn's httptools protocol with the connection limits uvicorn lacks.

uvicorn holds a connection that never sends a request forever: enough of them exhaust the file descriptors and
nothing, not even a health check, gets in. Here a connection must send each whole request (head and body) within
`ServeSettings.request_timeout_s` or is closed, and beyond `max_connections` open connections (at most the
descriptor limit less a reserve) the oldest connection not in a request is closed to make room. uvicorn names
the protocol class by import path, so each worker process builds it from the settings in its environment.
"""

from __future__ import annotations

import asyncio
import resource
from collections import OrderedDict
from functools import cache
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deploycheck.server.settings import ServeSettings

RESERVED_DESCRIPTORS = 64  # kept free of client connections: model files, logs, the health check's own


def raise_descriptor_limit() -> int:
    """Raise this process's open-file limit to the hard limit (each connection is a descriptor); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@cache
def connection_limits() -> tuple[float, int]:
    """(request timeout in seconds, maximum open connections) of this worker process."""
    settings = ServeSettings.from_environment()
    return settings.request_timeout_s, max(1, min(settings.max_connections,
                                                  raise_descriptor_limit() - RESERVED_DESCRIPTORS))


class GuardedProtocol(HttpToolsProtocol):  # type: ignore[misc]
    opened: ClassVar[OrderedDict[Any, None]] = OrderedDict()  # this process's connections, oldest first

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadline: asyncio.TimerHandle | None = None
        self._arm()
        self.opened[self] = None
        if len(self.opened) > connection_limits()[1]:
            self._evict_idle()

    def _idle(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _arm(self) -> None:
        if self.deadline is None:
            self.deadline = self.loop.call_later(connection_limits()[0], self._timed_out)

    def _timed_out(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.close()  # no whole request within the deadline: an idle or slow client

    def _evict_idle(self) -> None:
        for connection in self.opened:
            if connection is not self and connection._idle():
                connection.transport.close()
                return

    def data_received(self, data: bytes) -> None:
        if self._idle():
            self._arm()  # a request starts: it has the deadline to arrive whole
        super().data_received(data)

    def on_message_complete(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.opened.pop(self, None)
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        super().connection_lost(exc)
