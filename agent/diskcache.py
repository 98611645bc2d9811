"""Caches in the user's cache dir: load fast, write atomically, and never fail a run.

Every derived, rebuildable file lives under :func:`cache_dir`: the policy parse cache and the packing index
(pickles, and a memory-mapped file), the tokenizer's decoded ranks and the starter memories' embeddings
(checksummed marshal files), the Jinja2 bytecode. A cache file is ours (versioned by a code hash in its
name); a corrupt or unreadable one is simply a cold cache.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import marshal
import mmap
import os
import pickle
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside the block (restored after it, if it was on): loading or
    building many small objects at once triggers GC passes that cost more than the work itself."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def cache_dir() -> Path | None:
    """``$DATA_AGENT_CACHE_DIR``, else ``cache/`` in the user data dir; None when that variable is ``off``
    (or ``0``, ``none``, ``false``): then nothing is cached on disk."""
    where = os.environ.get("DATA_AGENT_CACHE_DIR")
    if where and where.lower() in ("off", "0", "none", "false"):
        return None
    if where:
        return Path(where)
    from agent.resources import user_data_dir

    return user_data_dir() / "cache"


def load_pickle(path: Path | None) -> dict[Any, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        with open(path, "rb") as fh, paused_gc():  # a GC pass per allocation burst triples the load time
            data = pickle.load(fh)
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


def save_marshal(path: Path, value: Any, *, prefix: str) -> bool:
    """``value`` (plain data only) as marshal behind the sha256 of the payload, written atomically."""
    payload = marshal.dumps(value)
    return _write_atomically(
        path, prefix, lambda fh: fh.write(hashlib.sha256(payload).hexdigest().encode() + payload)
    )


def load_marshal(path: Path | None) -> Any:
    """What save_marshal wrote, or None when the file is missing, unreadable or fails its checksum."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    digest, payload = data[:64], data[64:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        return None
    try:
        return marshal.loads(payload)
    except (ValueError, EOFError, TypeError):
        return None


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
    try:
        with paused_gc():
            data = _unpickle_mapped(mapped)
    except Exception:  # noqa: BLE001 - a corrupt cache is a cold cache, never an error
        return {}
    return data if isinstance(data, dict) else {}


def _unpickle_mapped(mapped: mmap.mmap) -> Any:
    """The data in a mapped cache file, or {} when its framing is not ours or is cut short."""
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
    return pickle.loads(head, buffers=buffers)
