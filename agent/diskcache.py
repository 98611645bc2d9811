"""Pickled caches in the user's cache dir: load fast, write atomically, and never fail a run.

Both the policy parse cache and the packing index use these. A cache file is ours (in the user's data
dir, versioned by a code hash in its name); a corrupt or unreadable one is simply a cold cache.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def save_pickle(path: Path, data: dict[Any, Any], *, prefix: str) -> bool:
    """Write atomically (temporary file + rename). False when the cache dir is not writable."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(data, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False  # a read-only data dir only costs speed


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
