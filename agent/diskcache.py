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
