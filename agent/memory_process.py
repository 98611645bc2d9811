"""The memory store in a forked child process, for a cold ``data-agent design``.

A cold design spends ~0.45-0.55 s importing Chroma and opening the store, and about as long importing and
warming everything else (sqlglot, DuckDB, the Jinja2 templates, the tokenizer). Neither needs the other
before the recall stage, so on Linux the CLI forks as soon as it has parsed its arguments: the child imports
Chroma, opens the store and then answers ``recall`` and ``remember_run`` over a pair of pipes, while the
parent warms the rest on the other CPU (and rehearses the design: agent/commands/design.py).
The store is used exactly as in one process (the same file lock and generation checks); the parent never
imports Chroma.

Only where forking is safe: Linux, a single thread, Chroma not imported yet. A library caller, the MCP
server or a test that already holds clients keeps the store in its own process.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import DataAgentError, MemoryStoreError


def can_fork() -> bool:
    return sys.platform == "linux" and threading.active_count() == 1 and "chromadb" not in sys.modules


class MemoryProcess:
    """A stand-in for :class:`agent.memory.MemoryStore` with the two calls a design makes, served by a
    forked child. Errors raised in the child (busy, damaged, wrong embedder, ...) are raised here, unchanged,
    at the call that met them."""

    def __init__(self, memory_dir: str | Path | None, memory_url: str | None) -> None:
        self.location = memory_url or str(memory_dir or "the memory store")
        parent, child = _channel_pair()
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            parent.close()
            _serve(child, memory_dir, memory_url)
        child.close()
        self._conn: _Channel | None = parent
        self._pid = pid
        # runs once, in this process, the first time a call has to wait for the child (the CLI warms the
        # rest of the pipeline there); it is given a function that tells whether the answer has arrived
        self.while_waiting: Callable[[Callable[[], bool]], None] | None = None

    def prepare(self) -> None:
        """The request is valid: open the store now (creating and seeding it if it is new), without
        waiting. Until this or a call arrives, the child only imports Chroma, so a run that fails on its
        request never creates a store."""
        if self._conn is not None:
            with contextlib.suppress(OSError):  # a dead child is reported by the next call
                self._conn.send(("prepare", (), {}))

    def recall(self, request: Any, *, k: int = 5, kinds: Any = None) -> Any:
        return self._call("recall", request, k=k, kinds=kinds)

    def remember_run(self, designs: Any, used: Any) -> Any:
        return self._call("remember_run", designs, used)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._conn is None:
            raise MemoryStoreError("the memory process is closed", path=self.location)
        try:
            self._conn.send((method, args, kwargs))
            if self.while_waiting is not None:
                warm, self.while_waiting = self.while_waiting, None
                warm(self._conn.poll)
            status, value = self._conn.recv()
        except (EOFError, OSError):
            self.close()
            raise MemoryStoreError(
                "the memory process ended unexpectedly", path=self.location, hint="run the design again"
            ) from None
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        """Ask the child to close the store and exit, and reap it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(OSError):  # already gone
            conn.send(("close", (), {}))
        conn.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self._pid, 0)

    def __del__(self) -> None:
        self.close()


class _Channel:
    """One end of a two-way channel between the CLI and its memory process: two pipes carrying
    length-prefixed pickles. (multiprocessing.connection does the same; importing it cost ~9 ms before
    the fork, on the critical path of a cold design.)"""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd, self._write_fd = read_fd, write_fd

    def send(self, obj: Any) -> None:
        """Raises OSError (BrokenPipeError) when the other end is gone."""
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        view = memoryview(struct.pack("<Q", len(data)) + data)
        while view:
            view = view[os.write(self._write_fd, view) :]

    def recv(self) -> Any:
        """Raises EOFError when the other end is gone."""
        (size,) = struct.unpack("<Q", self._read_exactly(8))
        return pickle.loads(self._read_exactly(size))

    def poll(self) -> bool:
        """Whether something has arrived (or the other end is gone): recv would not wait."""
        return bool(select.select([self._read_fd], [], [], 0)[0])

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _read_exactly(self, size: int) -> bytes:
        chunks, missing = [], size
        while missing:
            chunk = os.read(self._read_fd, min(missing, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)


def _channel_pair() -> tuple[_Channel, _Channel]:
    """The parent's end and the child's end; after the fork each side closes the other's."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    return _Channel(to_parent_r, to_child_w), _Channel(to_child_r, to_parent_w)


def _serve(conn: _Channel, memory_dir: str | Path | None, memory_url: str | None) -> None:
    """The child: open the store at once (this is the work being overlapped), then answer calls until told
    to close or the parent goes away. Always leaves through ``os._exit``: nothing of the parent's exit
    handlers or buffered output runs or is written twice here."""
    code = 0
    store: Any = None
    opened = False
    opening_error: BaseException | None = None
    try:
        from agent.memory import open_store

        try:
            store = open_store(memory_dir, memory_url)
            if store.url or store.exists():
                store.count()  # import Chroma and open the client: the slow part
                opened = True
            else:  # a new store is created (and seeded) once the parent says the request is valid
                import chromadb.api.rust  # noqa: F401
        except DataAgentError as exc:
            opening_error = exc  # reported at the first call, where the in-process run would meet it
        while True:
            try:
                method, args, kwargs = conn.recv()
            except EOFError:  # the parent exited or was killed
                break
            if method == "close":
                break
            if method == "prepare":  # no reply: an error here is met again, and reported, by the next call
                if opening_error is None and not opened:
                    with contextlib.suppress(DataAgentError):
                        store.count()
                continue
            try:
                if opening_error is not None:
                    raise opening_error
                reply: tuple[str, Any] = ("ok", getattr(store, method)(*args, **kwargs))
            except DataAgentError as exc:
                reply = ("error", exc)
            except Exception as exc:  # noqa: BLE001 - report, as the in-process call would raise
                reply = ("error", MemoryStoreError(f"{type(exc).__name__}: {exc}"[:300], path=store.location))
            conn.send(reply)
    except BaseException:  # noqa: BLE001 - Ctrl-C or SIGTERM reach the child too; the parent reports them
        code = 1
    finally:
        try:
            if store is not None:
                store.close()
        finally:
            os._exit(code)
