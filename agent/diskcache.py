"""Pickled caches in the user's cache dir: load fast, write atomically, and never fail a run.

Both the policy parse cache and the packing index use these. A cache file is ours (in the user's data
dir, versioned by a code hash in its name); a corrupt or unreadable one is simply a cold cache.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import pickle
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def load_pickle(path: Path | None) -> dict[Any, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        with open(path, "rb") as fh:
            paused = gc.isenabled()
            gc.disable()  # a GC pass per allocation burst triples the load time
            try:
                data = pickle.load(fh)
            finally:
                if paused:
                    gc.enable()
    except Exception:  # noqa: BLE001 - a corrupt cache is a cold cache, never an error
        return {}
    return data if isinstance(data, dict) else {}


def _write_atomically(path: Path, prefix: str, write: Callable[[BinaryIO], None]) -> bool:
    """``write`` into a temporary file beside ``path``, then rename it into place. False when the cache
    dir is not writable: a read-only data dir only costs speed."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False


def save_pickle(path: Path, data: dict[Any, Any], *, prefix: str) -> bool:
    """Write atomically (temporary file + rename). False when the cache dir is not writable."""
    return _write_atomically(path, prefix, lambda fh: pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL))


class PickleCache:
    """A dict kept as one pickle file: loaded on first use, written (atomically) only after a change.

    ``path`` is called at load and at flush time, so a cache directory chosen by the environment is
    honoured; it returns None when caching is off, and then the cache lives in memory only.
    """

    def __init__(self, path: Callable[[], Path | None], *, prefix: str) -> None:
        self._path = path
        self._prefix = prefix
        self._data: dict[Any, Any] | None = None
        self.dirty = False

    def data(self) -> dict[Any, Any]:
        if self._data is None:
            self._data = load_pickle(self._path())
        return self._data

    def put(self, key: Any, value: Any) -> None:
        data = self.data()
        if data.get(key) != value:
            data[key] = value
            self.dirty = True

    def mark_dirty(self) -> None:
        self.dirty = True

    def flush(self) -> None:
        path = self._path()
        if self.dirty and self._data is not None and path is not None:
            self.dirty = not save_pickle(path, self._data, prefix=self._prefix)

    def reset(self) -> None:
        """Forget the in-memory copy; the next use reads the file again."""
        self._data = None
        self.dirty = False


# A mapped cache file: the pickle (protocol 5) of the data, with its large buffers (numpy arrays) stored
# out of band after it, each 64-byte aligned. Loading maps the file and unpickles the small head; the
# arrays are read-only views of the mapping, so only the pages a caller touches are ever read. Files are
# replaced by rename, never rewritten in place, so a mapping never sees its file change under it.
_MAGIC = b"DAMAP001"


def save_mapped(path: Path, data: dict[Any, Any], *, prefix: str) -> bool:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)

    def write(fh: BinaryIO) -> None:
        fh.write(_MAGIC + struct.pack("<QQ", len(head), len(buffers)))
        fh.write(head)
        for buffer in buffers:
            raw = buffer.raw()
            fh.write(struct.pack("<Q", raw.nbytes))
            fh.write(b"\0" * (-fh.tell() % 64))
            fh.write(raw)

    return _write_atomically(path, prefix, write)


def load_mapped(path: Path | None) -> dict[Any, Any]:
    """What save_mapped wrote, or {} when the file is missing, foreign, truncated or corrupt."""
    if path is None:
        return {}
    try:
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # missing, unreadable, or empty (an empty file cannot be mapped)
        return {}
    paused = gc.isenabled()
    gc.disable()
    try:
        view = memoryview(mapped)
        size = len(view)
        if view[:8] != _MAGIC or size < 24:
            return {}
        head_len, count = struct.unpack_from("<QQ", mapped, 8)
        pos = 24 + head_len
        if pos > size:
            return {}
        head = view[24:pos]
        buffers = []
        for _ in range(count):
            if pos + 8 > size:
                return {}
            (n,) = struct.unpack_from("<Q", mapped, pos)
            pos += 8
            pos += -pos % 64
            if pos + n > size:
                return {}
            buffers.append(view[pos : pos + n])
            pos += n
        data = pickle.loads(head, buffers=buffers)
    except Exception:  # noqa: BLE001 - a corrupt cache is a cold cache, never an error
        return {}
    finally:
        if paused:
            gc.enable()
    return data if isinstance(data, dict) else {}
