"""The local embedder: feature hashing of words, word pairs and character trigrams.

Chroma's default embedding function downloads an ONNX model on first use, which must never happen
silently. This embedder needs nothing but numpy, is deterministic across machines and Python versions
(blake2b, not ``hash()``), and is good at what memory recall needs here: overlap of technical vocabulary
(source systems, targets, patterns, entities). A stronger model can be plugged in by name; the store
records which embedder wrote it and refuses to mix them.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

import numpy as np

from agent.compress import terms

DIMENSION = 384


class HashingEmbedder:
    """``name`` and ``dimension`` are written into the collection metadata."""

    name = "hashing-v1"
    dimension = DIMENSION

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t).tolist() for t in texts]

    def _one(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dimension, dtype=np.float32)
        words = terms(text)
        features: list[tuple[str, float]] = [(w, 1.0) for w in words]
        features += [(f"{a}_{b}", 0.7) for a, b in zip(words, words[1:])]
        for w in set(words):
            padded = f"<{w}>"
            features += [(f"#{padded[i : i + 3]}", 0.25) for i in range(len(padded) - 2)]
        for feature, weight in features:
            bucket, sign = _slot(feature, self.dimension)
            vec[bucket] += sign * weight
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm else vec


@lru_cache(maxsize=262_144)
def _slot(feature: str, dimension: int) -> tuple[int, float]:
    """Bucket and sign of one feature (cached: vocabularies repeat, blake2b is the hot path)."""
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little") % dimension, 1.0 if digest[4] & 1 else -1.0


EMBEDDERS: dict[str, type[HashingEmbedder]] = {HashingEmbedder.name: HashingEmbedder}


def get_embedder(name: str | None = None) -> HashingEmbedder:
    name = name or HashingEmbedder.name
    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder {name!r}; available: {', '.join(EMBEDDERS)}")
    return EMBEDDERS[name]()


def describe(embedder: Any) -> str:
    return f"{embedder.name} ({embedder.dimension} dimensions)"
