"""A fake Anthropic Messages API: a real HTTP server on 127.0.0.1 that the real anthropic SDK talks to.

It speaks the shape of the API the planner uses — ``POST /v1/messages`` (non-streaming) and
``POST /v1/messages/count_tokens`` — and answers from a per-test script: tool_use replies, error bodies
with real status codes (401, 429, 529 ...), and replies slower than the client's timeout. Every request
is recorded (path, headers, JSON body) so tests can assert exactly what the SDK sent.

Usage reporting imitates prompt caching: the first request with a given cached prefix (tools + system up
to the last ``cache_control`` block) reports ``cache_creation_input_tokens``; later ones report
``cache_read_input_tokens``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | None = None  # None: build a message from ``tool`` / ``tool_input``
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    tool: str | None = None
    tool_input: dict[str, Any] | None = None
    stop_reason: str = "tool_use"
    output_tokens: int = 900


def tool_reply(tool: str, tool_input: dict[str, Any], **kw: Any) -> Reply:
    return Reply(tool=tool, tool_input=tool_input, **kw)


def error_reply(status: int, kind: str, message: str, **kw: Any) -> Reply:
    return Reply(status=status, body={"type": "error", "error": {"type": kind, "message": message}}, **kw)


def overloaded(**kw: Any) -> Reply:
    # retry-after-ms keeps the SDK's backoff short in tests; the real API sends retry-after on 429/529
    kw.setdefault("headers", {"retry-after-ms": "20"})
    return error_reply(529, "overloaded_error", "Overloaded", **kw)


def rate_limited(**kw: Any) -> Reply:
    kw.setdefault("headers", {"retry-after-ms": "20"})
    return error_reply(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit", **kw)


def unauthorized() -> Reply:
    return error_reply(401, "authentication_error", "invalid x-api-key")


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeMessagesAPI:
    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[Seen] = []
        self.count_tokens: Callable[[dict[str, Any]], int] = lambda body: len(json.dumps(body)) // 4
        self._prefixes: set[str] = set()
        self._lock = threading.Lock()
        # each open connection, by the thread serving it: the SDK keeps connections alive, and a thread
        # left waiting on one would outlive the test (a later test that forks needs a one-thread process)
        self._open: dict[threading.Thread, socket.socket] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = False  # tracked, so that server_close() joins every handler thread
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeMessagesAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        with self._lock:
            still_open = list(self._open.values())
        for connection in still_open:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()  # joins the handler threads (one not yet serving times out)

    def add(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def messages(self) -> list[Seen]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    # -- answering -----------------------------------------------------------------------------------

    def _answer(self, path: str, body: dict[str, Any]) -> tuple[Reply, dict[str, Any]]:
        if path == "/v1/messages/count_tokens":
            return Reply(), {"input_tokens": int(self.count_tokens(body))}
        if path != "/v1/messages":
            return error_reply(404, "not_found_error", f"no route {path}"), {}
        with self._lock:
            if not self.script:
                return error_reply(500, "api_error", "the test script has no reply left"), {}
            reply = self.script.pop(0)
        if reply.body is not None:
            return reply, reply.body
        return reply, self._message(body, reply)

    def _message(self, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
        prefix, prefix_tokens = _cached_prefix(request)
        with self._lock:
            hit = prefix is not None and prefix in self._prefixes
            if prefix is not None:
                self._prefixes.add(prefix)
        total = len(json.dumps(request)) // 4
        cached = prefix_tokens if prefix is not None else 0
        return {
            "id": f"msg_fake{next(_ids):04d}",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", "claude-sonnet-4-6"),
            "content": [
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{next(_ids):04d}",
                    "name": reply.tool,
                    "input": reply.tool_input,
                }
            ],
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": max(total - cached, 1),
                "output_tokens": reply.output_tokens,
                "cache_creation_input_tokens": 0 if hit else cached,
                "cache_read_input_tokens": cached if hit else 0,
            },
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # a connection left idle this long is closed: no thread waits on it for ever

            def setup(self) -> None:
                super().setup()
                with api._lock:
                    api._open[threading.current_thread()] = self.connection

            def finish(self) -> None:
                with api._lock:
                    api._open.pop(threading.current_thread(), None)
                super().finish()

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                body = json.loads(raw or b"{}")
                path = self.path.split("?")[0]
                api.requests.append(Seen("POST", path, {k.lower(): v for k, v in self.headers.items()}, body))
                reply, payload = api._answer(path, body)
                if reply.delay:
                    time.sleep(reply.delay)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", f"req_fake{next(_ids):04d}")
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); that is the point of a slow reply

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _cached_prefix(request: dict[str, Any]) -> tuple[str | None, int]:
    """The request prefix up to the last cache_control breakpoint in system (tools come first)."""
    system = request.get("system")
    if not isinstance(system, list):
        return None, 0
    last = max((i for i, b in enumerate(system) if b.get("cache_control")), default=None)
    if last is None:
        return None, 0
    prefix = json.dumps([request.get("tools"), system[: last + 1]], sort_keys=True)
    return prefix, len(prefix) // 4
