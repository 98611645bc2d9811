"""The memory store: past designs and learnings in Chroma, recalled by more than vector distance.

Embedded (``PersistentClient``) by default in the user's data directory, or a Chroma server
(``HttpClient``) when a URL is given. Embeddings are computed here by the local embedder and passed to
Chroma explicitly, so Chroma's own default (an ONNX model download) is never used.

Ranking (also in the README):
    score = 0.50 * similarity + 0.25 * overlap + 0.10 * rating + 0.10 * recency + 0.05 * use
where similarity = 1 - cosine distance, overlap = Jaccard of {sources, targets, pattern, compliance},
rating = (stars - 1) / 4 (0.5 when unrated), recency = 0.5 ** (age_days / 180),
use = min(use_count, 10) / 10.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.embeddings import HashingEmbedder, get_embedder
from agent.errors import MemoryStoreError
from agent.models import Design, DesignRequest, Memory, RecalledMemory, now_iso

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

COLLECTION = "data_agent_memories"
FORMAT_VERSION = 1
WEIGHTS = {"similarity": 0.50, "overlap": 0.25, "rating": 0.10, "recency": 0.10, "use": 0.05}
LIST_FIELDS = ("sources", "targets", "compliance", "tables")
LOCK_TIMEOUT_S = 30.0


def design_metadata(design: Design) -> dict[str, Any]:
    req = design.request
    return {
        "name": design.name,
        "design_id": design.id,
        "sources": req.source_kinds(),
        "targets": req.target_names(),
        "pattern": design.architecture.pattern,
        "compliance": list(req.compliance),
        "domain": req.domain,
        "tables": [t.qualified for t in design.storage.tables][:40],
    }


def request_facets(request: DesignRequest, pattern: str | None = None) -> set[str]:
    facets = {f"source:{k}" for k in request.source_kinds()}
    facets |= {f"target:{t}" for t in request.target_names()}
    facets |= {f"compliance:{c}" for c in request.compliance}
    if pattern:
        facets.add(f"pattern:{pattern}")
    return facets


def memory_facets(meta: dict[str, Any]) -> set[str]:
    facets = {f"source:{k}" for k in _as_list(meta.get("sources"))}
    facets |= {f"target:{t}" for t in _as_list(meta.get("targets"))}
    facets |= {f"compliance:{c}" for c in _as_list(meta.get("compliance"))}
    if meta.get("pattern"):
        facets.add(f"pattern:{meta['pattern']}")
    return facets


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v for v in str(value).split(",") if v]


def _to_chroma_meta(memory: Memory) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "kind": memory.kind,
        "created_at": memory.created_at,
        "updated_at": memory.updated_at,
        "use_count": memory.use_count,
        "rating": memory.rating if memory.rating is not None else -1.0,
        "content_hash": content_hash(memory.text),
    }
    extra = {}
    for key, value in memory.metadata.items():
        if key in LIST_FIELDS:
            meta[key] = ",".join(_as_list(value))
        elif isinstance(value, (str, int, float, bool)) and key not in meta:
            meta[key] = value
        else:
            extra[key] = value
    if extra:
        meta["extra_json"] = json.dumps(extra, sort_keys=True)
    return meta


def _from_chroma(mid: str, doc: str, meta: dict[str, Any]) -> Memory:
    meta = dict(meta or {})
    metadata: dict[str, Any] = {}
    for key, value in meta.items():
        if key in ("kind", "created_at", "updated_at", "use_count", "rating", "content_hash", "extra_json"):
            continue
        metadata[key] = _as_list(value) if key in LIST_FIELDS else value
    if meta.get("extra_json"):
        metadata.update(json.loads(meta["extra_json"]))
    rating = meta.get("rating")
    return Memory(
        id=mid,
        kind=meta.get("kind", "learning"),
        text=doc or "",
        metadata=metadata,
        rating=None if rating is None or rating < 0 else float(rating),
        use_count=int(meta.get("use_count", 0)),
        created_at=meta.get("created_at") or now_iso(),
        updated_at=meta.get("updated_at") or now_iso(),
    )


def content_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).lower().encode()).hexdigest()[:16]


class MemoryStore:
    """Past designs and learnings. Open with a directory (embedded) or a URL (Chroma server)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        url: str | None = None,
        embedder: HashingEmbedder | None = None,
        seed: bool = True,
    ) -> None:
        from agent.resources import default_memory_dir

        self.url = url
        self.path = None if url else Path(path) if path else default_memory_dir()
        self.embedder = embedder or get_embedder()
        self.seed = seed
        self._client: ClientAPI | None = None
        self._collection: Collection | None = None

    # -- opening -----------------------------------------------------------------------------------

    @property
    def location(self) -> str:
        return self.url or str(self.path)

    def _open(self) -> Collection:
        if self._collection is not None:
            return self._collection
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        if self.url:
            self._client = _http_client(self.url, settings)
        else:
            assert self.path is not None
            if self.path.exists() and not self.path.is_dir():
                raise MemoryStoreError("memory directory is a file, not a directory", path=self.path)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MemoryStoreError(
                    f"cannot create memory directory: {exc.strerror}", path=self.path
                ) from None
            self._check_format_file()
            try:
                self._client = chromadb.PersistentClient(path=str(self.path), settings=settings)
            except Exception as exc:  # chromadb raises many types for a damaged folder
                raise MemoryStoreError(
                    f"cannot open the memory store: {exc}",
                    path=self.path,
                    hint="restore it with 'data-agent memory import' from an export",
                ) from None
        meta = {
            "embedder": self.embedder.name,
            "dimension": self.embedder.dimension,
            "format_version": FORMAT_VERSION,
            "hnsw:space": "cosine",
        }
        try:
            collection = self._client.get_or_create_collection(
                COLLECTION, metadata=meta, embedding_function=None
            )
        except Exception as exc:
            raise MemoryStoreError(f"cannot open the memory collection: {exc}", path=self.location) from None
        stored = collection.metadata or {}
        if (
            stored.get("embedder") != self.embedder.name
            or int(stored.get("dimension", 0)) != self.embedder.dimension
        ):
            raise MemoryStoreError(
                f"the store was written by embedder {stored.get('embedder')!r} ({stored.get('dimension')} dims) "
                f"but this run uses {self.embedder.name!r} ({self.embedder.dimension} dims)",
                path=self.location,
                hint="run 'data-agent memory reindex' to re-embed every memory",
            )
        if int(stored.get("format_version", 1)) > FORMAT_VERSION:
            raise MemoryStoreError(
                f"the store has format version {stored.get('format_version')}, newer than this "
                f"data-agent understands ({FORMAT_VERSION})",
                path=self.location,
                hint="upgrade data-engineer-agent",
            )
        self._collection = collection
        if self.seed and collection.count() == 0:
            self._seed_starters()
        return collection

    def _check_format_file(self) -> None:
        assert self.path is not None
        marker = self.path / "data-agent.json"
        if marker.exists():
            try:
                version = int(json.loads(marker.read_text())["format_version"])
            except (ValueError, KeyError, OSError, TypeError):
                raise MemoryStoreError("unreadable format marker", path=marker) from None
            if version > FORMAT_VERSION:
                raise MemoryStoreError(
                    f"the store has format version {version}, newer than this data-agent understands "
                    f"({FORMAT_VERSION})",
                    path=marker,
                    hint="upgrade data-engineer-agent",
                )
        else:
            marker.write_text(
                json.dumps({"format_version": FORMAT_VERSION, "embedder": self.embedder.name}) + "\n"
            )

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """Serialise writers to an embedded store across processes. A server serialises on its own."""
        if self.url or self.path is None:
            yield
            return
        lock_path = self.path / "write.lock"
        with open(lock_path, "a+") as fh:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise MemoryStoreError(
                            f"the memory store is busy (another process held its lock for "
                            f"{LOCK_TIMEOUT_S:.0f}s)",
                            path=self.path,
                            hint="retry, or use a Chroma server for many writers",
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _seed_starters(self) -> None:
        from agent.starters import starter_memories

        self.add_many(starter_memories(), dedupe=False)

    # -- writing -----------------------------------------------------------------------------------

    def add(self, memory: Memory, *, dedupe: bool = True) -> str:
        return self.add_many([memory], dedupe=dedupe)[0]

    def add_many(self, memories: Sequence[Memory], *, dedupe: bool = True) -> list[str]:
        collection = self._open()
        ids: list[str] = []
        with self._write_lock():
            batch: list[Memory] = []
            for memory in memories:
                if dedupe:
                    existing = collection.get(where={"content_hash": content_hash(memory.text)}, limit=1)
                    if existing["ids"]:
                        ids.append(existing["ids"][0])
                        continue
                batch.append(memory)
                ids.append(memory.id)
            if batch:
                collection.upsert(
                    ids=[m.id for m in batch],
                    documents=[m.text for m in batch],
                    embeddings=self.embedder.embed([m.text for m in batch]),
                    metadatas=[_to_chroma_meta(m) for m in batch],
                )
        return ids

    def remember_design(self, design: Design, *, bundle: str | None = None) -> str:
        text = design_memory_text(design)
        meta = design_metadata(design)
        if bundle:
            meta["bundle"] = bundle
        memory = Memory(id=f"design-{design.id}", kind="design", text=text, metadata=meta)
        return self.add(memory)

    def mark_used(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        collection = self._open()
        with self._write_lock():
            got = collection.get(ids=list(ids), include=["metadatas"])
            metas = []
            for meta in got["metadatas"]:
                meta = dict(meta or {})
                meta["use_count"] = int(meta.get("use_count", 0)) + 1
                metas.append(meta)
            if got["ids"]:
                collection.update(ids=got["ids"], metadatas=metas)

    # -- reading -----------------------------------------------------------------------------------

    def count(self) -> int:
        return self._open().count()

    def get(self, memory_id: str) -> Memory:
        got = self._open().get(ids=[memory_id], include=["documents", "metadatas"])
        if not got["ids"]:
            raise MemoryStoreError(
                f"no memory with id {memory_id!r}",
                path=self.location,
                hint="list ids with 'data-agent memory search'",
            )
        return _from_chroma(got["ids"][0], got["documents"][0], got["metadatas"][0])

    def all(self) -> list[Memory]:
        got = self._open().get(include=["documents", "metadatas"])
        return sorted(
            (_from_chroma(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])),
            key=lambda m: (m.created_at, m.id),
        )

    def recall(
        self,
        request: DesignRequest | str,
        *,
        k: int = 5,
        kinds: Sequence[str] | None = None,
        candidates: int = 30,
    ) -> list[RecalledMemory]:
        collection = self._open()
        total = collection.count()
        if total == 0:
            return []
        query_text = request if isinstance(request, str) else request.summary()
        facets = set() if isinstance(request, str) else request_facets(request)
        where = {"kind": {"$in": list(kinds)}} if kinds else None
        result = collection.query(
            query_embeddings=self.embedder.embed([query_text]),
            n_results=min(candidates, total),
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        now = datetime.now(timezone.utc)
        recalled = []
        for mid, doc, meta, dist in zip(
            result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0]
        ):
            memory = _from_chroma(mid, doc, meta)
            recalled.append(score_memory(memory, 1.0 - float(dist), facets, now))
        recalled.sort(key=lambda r: (-r.score, r.memory.id))
        return recalled[:k]

    def close(self) -> None:
        self._collection = None
        self._client = None


def score_memory(memory: Memory, similarity: float, facets: set[str], now: datetime) -> RecalledMemory:
    mf = memory_facets(memory.metadata)
    # a memory with no structured facets (a plain learning) neither gains nor loses on overlap
    overlap = len(facets & mf) / len(facets | mf) if facets and mf else 0.5 * bool(facets)
    rating = (memory.rating - 1) / 4 if memory.rating is not None else 0.5
    try:
        age_days = max(0.0, (now - datetime.fromisoformat(memory.updated_at)).total_seconds() / 86400)
    except ValueError:
        age_days = 365.0
    recency = 0.5 ** (age_days / 180)
    use = min(memory.use_count, 10) / 10
    parts = {"similarity": similarity, "overlap": overlap, "rating": rating, "recency": recency, "use": use}
    score = sum(WEIGHTS[k] * v for k, v in parts.items())
    return RecalledMemory(
        memory=memory,
        score=round(score, 6),
        similarity=round(similarity, 6),
        why={k: round(v, 4) for k, v in parts.items()},
    )


def design_memory_text(design: Design) -> str:
    arch = design.architecture
    decisions = "; ".join(f"{d.topic}: {d.choice}" for d in arch.decisions[:8])
    tables = ", ".join(t.qualified for t in design.storage.tables[:12])
    return (
        f"Design {design.name}: {design.summary} Pattern {arch.pattern}, {arch.approach}, "
        f"{arch.modelling} modelling. Decisions: {decisions}. Tables: {tables}."
    )


def _http_client(url: str, settings: Any) -> ClientAPI:
    import socket
    from urllib.parse import urlparse

    import chromadb

    parsed = urlparse(url if "://" in url else f"http://{url}")
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 8000
    # fail fast on a server that is down: a TCP probe with a short timeout, not chromadb's retries
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        raise MemoryStoreError(
            f"cannot reach the Chroma server at {url}: {exc.strerror or exc}",
            hint="start it with 'chroma run' or omit --memory-url for the embedded store",
        ) from None
    try:
        return chromadb.HttpClient(host=host, port=port, ssl=parsed.scheme == "https", settings=settings)
    except Exception as exc:
        raise MemoryStoreError(f"cannot connect to the Chroma server at {url}: {exc}") from None


def open_store(
    memory_dir: str | Path | None = None, memory_url: str | None = None, *, seed: bool = True
) -> MemoryStore:
    url = memory_url or os.environ.get("DATA_AGENT_MEMORY_URL")
    return MemoryStore(memory_dir, url=url, seed=seed)
