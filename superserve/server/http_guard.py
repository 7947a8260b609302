"""Connection limits for the HTTP door that uvicorn does not have: a deadline on a request's headers and a cap on open
connections, so that idle or trickling clients (slowloris) cannot hold sockets without end and run the process out of
file descriptors, which the gRPC door, the workers' pipes and every other client share.

uvicorn closes an idle keep-alive connection after a response (`timeout_keep_alive`), but a connection that sends
nothing, or half a request line a byte at a time, is never closed by uvicorn (measured: 1,000 such connections were
all still open after 11 s; nothing in uvicorn arms a timer for them). Bodies already have their own deadline (`HttpDoor.body_timeout_s`,
answered 408). Here:
- every request's headers must be complete within `header_timeout_s` of the connection opening, or, on a keep-alive
  connection, of the next request's first byte (idle between requests is uvicorn's `timeout_keep_alive`), else 408
  and the connection closes;
- beyond `max_connections` open connections, a new one is answered 503 and closed at once.

It subclasses uvicorn's httptools protocol (the one `http="auto"` picks when httptools is installed, as it is with
this package) and hooks five of its methods; tests/test_http.py checks the behaviour, so an uvicorn that renames them
fails there, not in production.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS_CAP = 2048


def default_max_connections() -> int:
    """At most half this process's file-descriptor limit (the rest is for gRPC, pipes, files), and 2,048."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CAP
    return max(16, min(MAX_CONNECTIONS_CAP, soft // 2))


def _response(status: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type:
    """uvicorn's httptools protocol with a header deadline and a connection cap (pass as `uvicorn.Config(http=...)`)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if not header_timeout_s > 0 or max_connections < 1:
        raise ValueError(f"need header_timeout_s > 0 and max_connections >= 1, got {header_timeout_s}, "
                         f"{max_connections}")

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(_response("503 Service Unavailable",
                                          f"too many open connections (at most {max_connections}); retry later"))
                transport.close()
                return
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle from here on is the keep-alive timeout's; the next request's first byte re-arms

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # not in the middle of a pipelined answer
                self.transport.write(_response("408 Request Timeout",
                                               f"request headers not received within {header_timeout_s:g} s"))
            self.transport.close()

    return GuardedHttpToolsProtocol
