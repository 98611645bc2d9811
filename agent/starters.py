"""Starter memories: curated reference designs and learnings shipped in memory/, loaded into an empty store.

Each YAML file in memory/ holds one memory or a list of them:

    id: ref-orders-cdc-snowflake        # stable, so reloading never duplicates
    kind: design                        # design | learning
    text: >                             # what recall embeds and the pack quotes
      ...
    metadata: {name, sources, targets, pattern, compliance, domain, tables, topic}
"""

from __future__ import annotations

from pathlib import Path

import yaml

from agent import yamlio
from agent.errors import MemoryStoreError
from agent.models import Memory

STARTER_TIMESTAMP = "2026-01-01T00:00:00+00:00"


def starter_memories(folder: Path | None = None) -> list[Memory]:
    from agent.resources import shipped

    folder = folder or shipped("memory")
    memories: list[Memory] = []
    for path in sorted(folder.glob("*.y*ml")):
        try:
            data = yamlio.load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise MemoryStoreError(
                "malformed starter memory", path=path, line=mark.line + 1 if mark else None
            ) from None
        items = data if isinstance(data, list) else [data]
        for item in items:
            if not isinstance(item, dict):
                raise MemoryStoreError("a starter memory must be a mapping", path=path)
            item = {"created_at": STARTER_TIMESTAMP, "updated_at": STARTER_TIMESTAMP, **item}
            metadata = dict(item.get("metadata") or {})
            metadata.setdefault("starter", True)
            item["metadata"] = metadata
            memories.append(Memory.model_validate(item))
    return memories
