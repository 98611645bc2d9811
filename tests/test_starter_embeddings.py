"""Starter memories are seeded with cached embeddings: the same vectors as embedding them afresh."""

from __future__ import annotations

import pytest

from agent import memory
from agent.embeddings import get_embedder
from agent.starters import starter_memories


def test_cached_starter_embeddings_equal_fresh_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(memory, "_STARTER_VECTORS", {})
    embedder, starters = get_embedder(), starter_memories()
    fresh = embedder.embed([m.text for m in starters])
    assert memory._starter_embeddings(embedder, starters) == fresh
    (cached,) = (tmp_path / "cache").glob("starter-embeddings-*.marshal")
    memory._STARTER_VECTORS.clear()
    with monkeypatch.context() as m:  # read back from disk: nothing is embedded
        m.setattr(type(embedder), "embed", lambda self, texts: pytest.fail("embedded again"))
        assert memory._starter_embeddings(embedder, starters) == fresh
    cached.write_bytes(b"garbage")
    memory._STARTER_VECTORS.clear()
    assert memory._starter_embeddings(embedder, starters) == fresh  # a corrupt file is recomputed
    changed = [starters[0].model_copy(update={"text": starters[0].text + " kafka"}), *starters[1:]]
    assert memory._starter_embeddings(embedder, changed) == embedder.embed([m.text for m in changed])


def test_seeded_store_recalls_like_before(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", "off")
    from agent.request import request_from_text

    req = request_from_text("postgres orders CDC into snowflake hourly")
    monkeypatch.setattr(memory, "_starter_embeddings", lambda embedder, memories: None)
    before = [(r.memory.id, r.score) for r in memory.MemoryStore(tmp_path / "a").recall(req, k=5)]
    monkeypatch.undo()
    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("b", "c"):  # cold cache, then warm
        after = [(r.memory.id, r.score) for r in memory.MemoryStore(tmp_path / name).recall(req, k=5)]
        assert after == before
