"""The memory store: past designs and learnings in Chroma, recalled by more than vector distance.

Embedded (``PersistentClient``) by default in the user's data directory, or a Chroma server
(``HttpClient``) when a URL is given. Embeddings are computed here by the local embedder and passed to
Chroma explicitly, so Chroma's own default (an ONNX model download) is never used.

Ranking (also in the README). The 100 nearest memories by cosine distance are re-scored with

    score = 0.45 * similarity + 0.40 * overlap + 0.06 * rating + 0.05 * recency + 0.04 * use

where similarity = 1 - cosine distance; overlap = weighted Jaccard of the request's and the memory's facets
{source kinds, targets, pattern, compliance} (weight 1 each, compliance 0.5; the request's pattern is
read from its words (``PATTERN_WORDS``), e.g. "CDC"/"Debezium" -> cdc, "nightly"/"daily"/"batch" -> batch,
"real-time"/"streaming" -> streaming, "lambda" or batch and streaming together -> lambda), 0.5 for a
memory without facets when the request has some, 0 when the request has none; rating = (stars - 1) / 4 (0.5 when unrated); recency =
0.5 ** (days since last update / 180); use = min(use_count, 10) / 10. Ties break on id.

Writes deduplicate: a memory whose normalised text is already stored is not stored again (the existing
id is returned), and a memory of the same kind whose embedding has cosine similarity >= 0.97 with an
existing one updates that record (text, embedding, metadata, updated_at) instead of adding a new one.

Concurrency (embedded): Chroma's embedded engine keeps an in-memory HNSW index per path, so two processes
writing through clients they keep open corrupt the folder, and a long-lived client does not see other
processes' writes (DESIGN.md). So every operation takes an exclusive ``fcntl`` lock on
``<dir>/.data-agent.lock``, and a client is only used while it is known to be current: every write first
replaces the random token in ``<dir>/.data-agent.generation``, and an operation reuses the client kept from
this process's last operation only if the token is still the one that client saw or wrote; otherwise it
stops that client (measured: stopping a stale client writes nothing) and opens a fresh one. A process that
is the only writer, or that only reads, therefore keeps its client and its loaded index; a process whose
store another process changed pays one reopen. ``with store.session():`` holds the lock across a batch of
operations (it excludes other processes meanwhile, so keep it short). Measured on a busy 2-CPU machine: a
fresh open costs ~7-22 ms at 1k memories and ~400 ms at 100k (the index is loaded from disk), a recall
with the kept client ~16-20 ms at any of those sizes. A Chroma server serialises writers itself, so the
server backend keeps its client open (11-19 ms p50 per recall).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
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
WEIGHTS = {"similarity": 0.45, "overlap": 0.40, "rating": 0.06, "recency": 0.05, "use": 0.04}
LIST_FIELDS = ("sources", "targets", "compliance", "tables")
NEAR_DUPLICATE = 0.97
CANDIDATES = 100
# a second candidate query, filtered to memories sharing a source or target with the request: better recall
# from few candidates, but a filtered query costs ~10x a plain one in Chroma, so it is off by default
FACET_CANDIDATES = False
# A design run waits this long for another process's memory operation before giving up with a clear error.
LOCK_TIMEOUT_S = float(os.environ.get("DATA_AGENT_LOCK_TIMEOUT", "30"))
REBUILD_HINT = (
    "rebuild it with 'data-agent memory rebuild --from-export FILE.jsonl' or "
    "'data-agent memory rebuild --from-bundles DIR' (saved design bundles)"
)
LOCK_FILE = ".data-agent.lock"
# changed by every write; a process keeps its client between operations only while this is unchanged
GENERATION_FILE = ".data-agent.generation"
MARKER_FILE = "data-agent.json"
CHUNK = 2000  # rows per Chroma call (its max batch is larger, this keeps memory flat)
_SETTINGS: Any = None
_RESERVED = ("kind", "created_at", "updated_at", "use_count", "rating", "content_hash", "extra_json")


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


PATTERN_WORDS = {
    "cdc": ("cdc", "debezium", "change data capture", "log-based", "binlog", "replication"),
    "streaming": ("streaming", "real-time", "realtime", "continuous", "sub-minute", "low-latency"),
    "batch": ("batch", "nightly", "daily", "scheduled", "hourly"),
    "lambda": ("lambda", "speed layer", "batch and streaming", "streaming and batch", "batch plus streaming"),
    "kappa": ("kappa",),
}


def text_facets(text: str) -> set[str]:
    """Facets a free-text query states in words: the processing pattern (e.g. 'nightly' -> batch)."""
    low = text.lower()
    found = {p for p, words in PATTERN_WORDS.items() if any(w in low for w in words)}
    if "lambda" in found or {"batch", "streaming"} <= found:  # both paths named: a lambda architecture
        found = (found - {"batch", "streaming"}) | {"lambda"}
    return {f"pattern:{p}" for p in found}


def _flag(facet: str) -> str:
    return "fx_" + "".join(c if c.isalnum() else "_" for c in facet)


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v for v in str(value).split(",") if v]


def _to_chroma_meta(memory: Memory) -> dict[str, Any]:
    """Chroma metadata is flat scalars, and every key costs a row in its SQLite index. So the exact record
    (metadata, rating, use count, timestamps) travels as one JSON string, and only what ``where`` filters
    need is a key of its own: kind, content hash, and one boolean flag per facet."""
    meta: dict[str, Any] = {
        "kind": memory.kind,
        "content_hash": content_hash(memory.text),
        "record": json.dumps(
            {
                "metadata": memory.metadata,
                "rating": memory.rating,
                "use_count": memory.use_count,
                "created_at": memory.created_at,
                "updated_at": memory.updated_at,
            },
            sort_keys=True,
            default=str,
        ),
    }
    for facet in memory_facets(memory.metadata):  # flags for the facet-filtered candidate query
        meta[_flag(facet)] = True
    return meta


def _from_chroma(mid: str, doc: str | None, meta: dict[str, Any] | None) -> Memory:
    meta = dict(meta or {})
    if "record" in meta:
        record = json.loads(meta["record"])
        return Memory(id=mid, kind=meta.get("kind", "learning"), text=doc or "", **record)
    if "meta_json" in meta:
        metadata = json.loads(meta["meta_json"])
    else:  # records written before meta_json existed
        metadata = {}
        for key, value in meta.items():
            if key in _RESERVED or key.startswith("fx_"):
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


def _chunks(seq: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


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
        self._depth = 0
        self._thread_lock = threading.RLock()
        self._key = str(self.path.resolve()) if self.path else ""
        self._generation: str | None = None  # the store generation this operation saw or wrote
        self._wrote = False
        self.stats = {"opens": 0, "lock_wait_s": 0.0}
        self.last_outcomes: list[str] = []  # per memory of the last deduplicated add: added|updated|duplicate

    @property
    def location(self) -> str:
        return self.url or str(self.path)

    @property
    def backend(self) -> str:
        return "server" if self.url else "embedded"

    def prepare(self) -> None:
        """Told by a design run once its request is valid. Nothing to do in this process: the store opens
        at its first operation (the CLI's MemoryProcess opens it then, in another process)."""

    def exists(self) -> bool:
        """An embedded store has been created in its folder (opening it then writes nothing)."""
        return self.path is not None and (self.path / MARKER_FILE).is_file()

    # -- sessions ----------------------------------------------------------------------------------

    @contextmanager
    def session(self, *, check_embedder: bool = True, write: bool = True) -> Iterator[Collection]:
        """The collection, valid inside the block. Embedded: an exclusive lock for the whole block, and the
        client kept from the last operation if no process has written since, else a fresh one. Pass
        ``write=False`` for a block that only reads (it leaves the store's generation alone, so other
        processes keep their clients). Re-entrant within a process."""
        with self._thread_lock:
            if self._depth > 0 and self._collection is not None:
                if write:
                    self._start_write()
                self._depth += 1
                try:
                    yield self._collection
                finally:
                    self._depth -= 1
                return
            if self.url:
                collection = self._collection or self._connect(check_embedder=check_embedder)
                self._collection = collection
                self._depth += 1
                try:
                    yield collection
                finally:
                    self._depth -= 1
                return
            self._prepare_dir()
            with self._file_lock():
                self._generation = _read_generation(self.path) or _write_generation(self.path)
                self._wrote = False
                kept = _KEPT.pop(self._key, None)
                if kept is not None and self._generation is not None and kept.generation == self._generation:
                    self._client, self._collection = kept.client, kept.collection
                    try:
                        self._check_collection(kept.collection.metadata or {}, check_embedder=check_embedder)
                    except MemoryStoreError:
                        self._release_client()
                        raise
                else:
                    if kept is not None:
                        _stop_client(kept.client)
                    self._connect(check_embedder=check_embedder)
                if write:
                    self._start_write()
                ok = False
                try:
                    self._depth += 1
                    try:
                        yield self._collection
                        ok = True
                    except MemoryStoreError:
                        raise
                    except Exception as exc:
                        raise storage_error(exc, self.location) from None
                    finally:
                        self._depth -= 1
                finally:
                    self._keep_or_release(ok)

    def _start_write(self) -> None:
        """Mark the store as changed before writing to it: every other process's kept client is now stale
        and will be replaced at its next operation. Done first, so that a write failing half-way still
        invalidates them, and a full disk stops the operation before Chroma is touched."""
        if self.url or self._wrote:
            return
        assert self.path is not None
        self._generation = _write_generation(self.path)
        self._wrote = True

    def _keep_or_release(self, ok: bool) -> None:
        """Under the lock, after an operation: keep a client that is known current (the operation ended
        normally and the generation file names what it saw or wrote), release any other."""
        client, collection = self._client, self._collection
        self._client, self._collection = None, None
        if client is None or collection is None:
            return
        if ok and self._generation is not None:
            _KEPT[self._key] = _Kept(client, collection, self._generation)
            while len(_KEPT) > MAX_KEPT:  # the least recently used folder's client goes
                _stop_client(_KEPT.pop(next(iter(_KEPT))).client)
        else:
            _stop_client(client)

    def _prepare_dir(self) -> None:
        assert self.path is not None
        if self.path.exists() and not self.path.is_dir():
            raise MemoryStoreError("memory directory is a file, not a directory", path=self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MemoryStoreError(
                f"cannot create memory directory: {exc.strerror}", path=self.path
            ) from None
        self._check_format_file(write=False)

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        assert self.path is not None
        lock_path = self.path / LOCK_FILE
        started = time.monotonic()
        with open(lock_path, "a+") as fh:
            deadline = started + LOCK_TIMEOUT_S
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
                            hint="retry, or use a Chroma server (--memory-url) for many writers",
                        ) from None
                    time.sleep(0.002 + random.random() * 0.008)
            self.stats["lock_wait_s"] += time.monotonic() - started
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _release_client(self) -> None:
        client, self._client, self._collection = self._client, None, None
        if client is not None:
            _stop_client(client)

    def _connect(self, *, check_embedder: bool = True) -> Collection:
        import chromadb
        from chromadb.config import Settings

        global _SETTINGS
        if _SETTINGS is None:  # building Settings reads the environment: ~7 ms, so once per process
            _SETTINGS = Settings(anonymized_telemetry=False, allow_reset=False)
        settings = copy.deepcopy(_SETTINGS)  # chromadb mutates the object it is given
        self.stats["opens"] += 1
        if self.url:
            self._client = _http_client(self.url, settings)
        else:
            try:
                self._client = chromadb.PersistentClient(path=str(self.path), settings=settings)
            except Exception as exc:  # chromadb raises many types for a damaged folder
                raise MemoryStoreError(
                    f"cannot open the memory store, it looks damaged: {str(exc)[:200]}",
                    path=self.path,
                    hint=REBUILD_HINT,
                ) from None
        created = False
        try:
            try:
                collection = self._client.get_collection(COLLECTION, embedding_function=None)
            except Exception as exc:
                if "does not exist" not in str(exc) and "NotFound" not in type(exc).__name__:
                    raise
                try:
                    collection = self._client.create_collection(
                        COLLECTION, metadata=self._collection_meta(), embedding_function=None
                    )
                    created = True
                except Exception:  # another process (server) created it first
                    collection = self._client.get_collection(COLLECTION, embedding_function=None)
        except MemoryStoreError:
            raise
        except Exception as exc:
            self._release_client()
            raise MemoryStoreError(
                f"cannot open the memory collection, it looks damaged: {str(exc)[:200]}",
                path=self.location,
                hint=None if self.url else REBUILD_HINT,
            ) from None
        try:
            self._check_collection(collection.metadata or {}, check_embedder=check_embedder)
        except MemoryStoreError:
            self._release_client()
            raise
        if self.path is not None:
            self._check_format_file(write=True)
        self._collection = collection
        if created and self.seed:
            self._start_write()
            self._seed_starters(collection)
        return collection

    def _check_collection(self, stored: dict[str, Any], *, check_embedder: bool) -> None:
        if int(stored.get("format_version", 1)) > FORMAT_VERSION:
            raise MemoryStoreError(
                f"the store has format version {stored.get('format_version')}, newer than this "
                f"data-agent understands ({FORMAT_VERSION})",
                path=self.location,
                hint="upgrade data-engineer-agent",
            )
        if check_embedder and (
            stored.get("embedder") != self.embedder.name
            or int(stored.get("dimension", 0)) != self.embedder.dimension
        ):
            raise MemoryStoreError(
                f"the store was written by embedder {stored.get('embedder')!r} ({stored.get('dimension')} "
                f"dims) but this run uses {self.embedder.name!r} ({self.embedder.dimension} dims)",
                path=self.location,
                hint="run 'data-agent memory reindex' to re-embed every memory",
            )

    def _collection_meta(self) -> dict[str, Any]:
        return {
            "embedder": self.embedder.name,
            "dimension": self.embedder.dimension,
            "format_version": FORMAT_VERSION,
            "hnsw:space": "cosine",
        }

    def _check_format_file(self, *, write: bool) -> None:
        assert self.path is not None
        marker = self.path / MARKER_FILE
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
        elif write:  # only under the lock
            tmp = marker.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(
                json.dumps({"format_version": FORMAT_VERSION, "embedder": self.embedder.name}) + "\n"
            )
            os.replace(tmp, marker)

    def _seed_starters(self, collection: Collection) -> None:
        from agent.starters import starter_memories

        memories = starter_memories()
        # the collection was created empty by this call: add, which skips upsert's lookup of existing ids
        # (seeding a new store: ~36 -> ~27 ms of a first design)
        self._upsert(collection, memories, _starter_embeddings(self.embedder, memories), new=True)

    # -- writing -----------------------------------------------------------------------------------

    def _upsert(
        self, collection: Collection, memories: Sequence[Memory], embeddings: Any = None, *, new: bool = False
    ) -> None:
        """Write ``memories`` (``new``: ids known not to be in the collection yet)."""
        if not memories:
            return
        if embeddings is None:
            embeddings = self.embedder.embed([m.text for m in memories])
        write = collection.add if new else collection.upsert
        for start in range(0, len(memories), CHUNK):
            part = memories[start : start + CHUNK]
            write(
                ids=[m.id for m in part],
                documents=[m.text for m in part],
                embeddings=embeddings[start : start + CHUNK],
                metadatas=[_to_chroma_meta(m) for m in part],
            )

    def add(self, memory: Memory, *, dedupe: bool = True) -> str:
        return self.add_many([memory], dedupe=dedupe)[0]

    def add_many(self, memories: Sequence[Memory], *, dedupe: bool = True) -> list[str]:
        """Store memories; returns the id each one ended up under (an existing id when deduplicated)."""
        if not memories:
            return []
        embeddings = self.embedder.embed([m.text for m in memories])
        with self.session() as collection:
            if not dedupe:
                self._upsert(collection, memories, embeddings)
                return [m.id for m in memories]
            return self._add_deduped(collection, memories, embeddings)

    def _add_deduped(self, collection: Collection, memories: Sequence[Memory], embeddings: Any) -> list[str]:
        hashes = [content_hash(m.text) for m in memories]
        exact: dict[str, str] = {}
        if len(memories) > 1:  # a batch: one filtered get finds the exact repeats
            for part in _chunks(sorted(set(hashes)), 500):
                got = collection.get(where={"content_hash": {"$in": list(part)}}, include=["metadatas"])
                for mid, meta in zip(got["ids"], got["metadatas"]):
                    exact.setdefault((meta or {}).get("content_hash", ""), mid)
        total = collection.count()
        near: list[Any] = [None] * len(memories)
        if total:
            # nearest neighbours of every new text in one call: an exact repeat has distance 0, so it is
            # among them; a near-duplicate must also be of the same kind
            found = collection.query(
                query_embeddings=list(embeddings),
                n_results=min(5, total),
                include=["metadatas", "documents", "distances"],
            )
            for n, memory in enumerate(memories):
                for mid, doc, meta, dist in zip(
                    found["ids"][n], found["documents"][n], found["metadatas"][n], found["distances"][n]
                ):
                    meta = meta or {}
                    if meta.get("content_hash") == hashes[n]:
                        exact.setdefault(hashes[n], mid)
                        break
                    if (
                        near[n] is None
                        and meta.get("kind") == memory.kind
                        and 1.0 - float(dist) >= NEAR_DUPLICATE
                    ):
                        near[n] = _from_chroma(mid, doc, meta)
        ids: list[str] = []
        new: list[Memory] = []
        new_emb: list[Any] = []
        updates: dict[str, tuple[Memory, Any]] = {}
        self.last_outcomes = outcomes = []
        for memory, emb, h, target in zip(memories, embeddings, hashes, near):
            if h in exact:  # an exact repeat: keep the stored one
                ids.append(exact[h])
                outcomes.append("duplicate")
                continue
            outcomes.append("added" if target is None and memory.id not in updates else "updated")
            if target is None and memory.id not in updates:
                new.append(memory)
                new_emb.append(emb)
                ids.append(memory.id)
                exact[h] = memory.id
                continue
            base = target or memory
            merged = base.model_copy(
                update={
                    "text": memory.text,
                    "metadata": {**base.metadata, **memory.metadata},
                    "updated_at": now_iso(),
                }
            )
            updates[merged.id] = (merged, emb)
            ids.append(merged.id)
            exact[h] = merged.id
        if new:
            self._upsert(collection, new, new_emb)
        if updates:
            mems = [m for m, _ in updates.values()]
            self._upsert(collection, mems, [e for _, e in updates.values()])
        return ids

    def remember_design(self, design: Design, *, bundle: str | None = None) -> str:
        return self.add(design_memory(design, bundle=bundle))

    def remember_designs(self, designs: Sequence[tuple[Design, str | None]]) -> list[str]:
        """Several designs (with their bundle paths) in one deduplicated write."""
        return self.add_many([design_memory(design, bundle=bundle) for design, bundle in designs])

    def remember_run(
        self, designs: Sequence[tuple[Design, str | None]], used: Mapping[str, int]
    ) -> list[str]:
        """What a design run (or a batch of them) writes, in one session: the designs, and one use of each
        memory their context packs carried. Returns the id each design was stored under."""
        with self.session():
            ids = self.remember_designs(designs)
            self.mark_used(used)
        return ids

    def add_result(
        self, design_id: str, text: str, *, source: str | None = None, agent: str | None = None
    ) -> str:
        """Record what a delegated agent returned for a design, as a recallable ``result`` memory."""
        with self.session():
            design = self._resolve_design(design_id)
            meta: dict[str, Any] = {
                "design_id": design.metadata.get("design_id", design.id),
                "design_memory_id": design.id,
                "name": design.metadata.get("name", design.id),
            }
            for key in ("sources", "targets", "pattern", "compliance", "domain"):
                if key in design.metadata:
                    meta[key] = design.metadata[key]
            if source:
                meta["source_file"] = source
            if agent:
                meta["agent"] = agent
            rid = f"result-{design.id}-{content_hash(text)[:8]}"
            return self.add(Memory(id=rid, kind="result", text=text, metadata=meta))

    def _resolve_design(self, design_id: str) -> Memory:
        for candidate in (design_id, f"design-{design_id}"):
            found = self.get_many([candidate])
            if found:
                return found[0]
        raise MemoryStoreError(
            f"no design with id {design_id!r} in memory",
            path=self.location,
            hint="list designs with 'data-agent memory search QUERY --kind design'",
        )

    def _update(self, memories: Sequence[Memory], *, reembed: bool = False) -> None:
        with self.session() as collection:
            for part in _chunks(list(memories)):
                kwargs: dict[str, Any] = {
                    "ids": [m.id for m in part],
                    "metadatas": [_to_chroma_meta(m) for m in part],
                }
                if reembed:
                    kwargs["documents"] = [m.text for m in part]
                    kwargs["embeddings"] = self.embedder.embed([m.text for m in part])
                collection.update(**kwargs)

    def mark_used(self, ids: Sequence[str] | Mapping[str, int]) -> None:
        """Count one use of each memory, or, given a mapping, that many uses (a batch's designs together)."""
        if not ids:
            return
        uses = Counter(ids) if isinstance(ids, Mapping) else Counter(dict.fromkeys(ids, 1))
        with self.session():
            memories = self.get_many(list(uses))
            for m in memories:
                m.use_count += uses[m.id]
            self._update(memories)

    def rate(self, memory_id: str, stars: int, note: str | None = None) -> Memory:
        if not 1 <= int(stars) <= 5:
            raise MemoryStoreError(f"a rating is 1 to 5 stars, not {stars}", field="rating")
        with self.session():
            memory = self.get(memory_id)
            memory.rating = float(stars)
            if note:
                notes = list(memory.metadata.get("notes") or [])
                notes.append({"at": now_iso(), "stars": int(stars), "note": note})
                memory.metadata["notes"] = notes
            self._update([memory])
            return memory

    def forget(
        self,
        *,
        ids: Sequence[str] | None = None,
        older_than_days: float | None = None,
        kind: str | None = None,
        where: dict[str, str] | None = None,
        dry_run: bool = False,
    ) -> list[str]:
        """Delete by id, or every memory matching all of age, kind and metadata filters. Returns the ids."""
        if not ids and older_than_days is None and not kind and not where:
            raise MemoryStoreError("forget needs --id, --older-than, --kind or --where", field="forget")
        with self.session() as collection:
            if ids:
                found = {m.id for m in self.get_many(list(ids))}
                missing = [i for i in ids if i not in found]
                if missing:
                    raise MemoryStoreError(f"no memory with id {missing[0]!r}", path=self.location)
                chosen = list(dict.fromkeys(ids))
            else:
                cutoff = (
                    datetime.now(timezone.utc) - timedelta(days=older_than_days)
                    if older_than_days is not None
                    else None
                )
                chosen = [m.id for m in self.all() if _matches(m, cutoff, kind, where or {})]
            if chosen and not dry_run:
                for part in _chunks(chosen):
                    collection.delete(ids=list(part))
            return chosen

    def import_memories(self, memories: Sequence[Memory]) -> int:
        """Restore memories exactly as exported (ids, timestamps, ratings); an existing id is replaced."""
        with self.session() as collection:
            self._upsert(collection, memories)
        return len(memories)

    def reindex(self) -> int:
        """Re-embed every memory with the current embedder (and record it in the collection metadata)."""
        with self.session(check_embedder=False) as collection:
            got = collection.get(include=["documents", "metadatas"])
            memories = [
                _from_chroma(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])
            ]
            assert self._client is not None
            self._client.delete_collection(COLLECTION)
            fresh = self._client.create_collection(
                COLLECTION, metadata=self._collection_meta(), embedding_function=None
            )
            self._collection = fresh
            self._upsert(fresh, memories)
            if self.path is not None:
                marker = self.path / MARKER_FILE
                marker.write_text(
                    json.dumps({"format_version": FORMAT_VERSION, "embedder": self.embedder.name}) + "\n"
                )
            return len(memories)

    # -- reading -----------------------------------------------------------------------------------

    def count(self) -> int:
        with self.session(write=False) as collection:
            return collection.count()

    def get(self, memory_id: str) -> Memory:
        found = self.get_many([memory_id])
        if not found:
            raise MemoryStoreError(
                f"no memory with id {memory_id!r}",
                path=self.location,
                hint="list ids with 'data-agent memory search'",
            )
        return found[0]

    def get_many(self, ids: Sequence[str]) -> list[Memory]:
        with self.session(write=False) as collection:
            got = collection.get(ids=list(dict.fromkeys(ids)), include=["documents", "metadatas"])
        return [_from_chroma(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])]

    def all(self) -> list[Memory]:
        out: list[Memory] = []
        with self.session(write=False) as collection:
            total = collection.count()
            for offset in range(0, total, CHUNK):
                got = collection.get(include=["documents", "metadatas"], limit=CHUNK, offset=offset)
                out += [
                    _from_chroma(i, d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])
                ]
        return sorted(out, key=lambda m: (m.created_at, m.id))

    def recall(
        self,
        request: DesignRequest | str,
        *,
        k: int = 5,
        kinds: Sequence[str] | None = None,
        candidates: int | None = None,
    ) -> list[RecalledMemory]:
        query_text = request if isinstance(request, str) else request.summary()
        facets = text_facets(query_text) | (set() if isinstance(request, str) else request_facets(request))
        embedding = self.embedder.embed([query_text])
        with self.session(write=False) as collection:
            return self._rank(collection, embedding, facets, k=k, kinds=kinds, candidates=candidates)

    def recall_by_facets(
        self, text: str, facets: Iterable[str], *, k: int = 5, kinds: Sequence[str] | None = None
    ) -> list[RecalledMemory]:
        """Recall with explicit facets (``source:postgres``, ``target:snowflake``, ...): used by tools and
        the benchmark, which have the structure of a request without a DesignRequest."""
        with self.session(write=False) as collection:
            facets = set(facets) | text_facets(text)
            return self._rank(collection, self.embedder.embed([text]), facets, k=k, kinds=kinds)

    def _rank(
        self,
        collection: Collection,
        embedding: Any,
        facets: set[str],
        *,
        k: int,
        kinds: Sequence[str] | None,
        candidates: int | None = None,
    ) -> list[RecalledMemory]:
        candidates = candidates or CANDIDATES
        kind_filter = {"kind": {"$in": list(kinds)}} if kinds else None
        queries = [kind_filter]
        if (
            facets and FACET_CANDIDATES
        ):  # hybrid candidates: the nearest by vector, and the nearest that share a facet
            flags = [{_flag(f): True} for f in sorted(facets) if not f.startswith("pattern:")]
            flags = flags or [{_flag(f): True} for f in sorted(facets)]
            facet_filter = flags[0] if len(flags) == 1 else {"$or": flags}
            queries.append({"$and": [kind_filter, facet_filter]} if kind_filter else facet_filter)
        seen: dict[str, tuple[str, dict[str, Any], float]] = {}
        for where in queries:
            try:
                result = collection.query(
                    query_embeddings=embedding,
                    n_results=max(candidates, k),
                    where=where,
                    include=["documents", "metadatas", "distances"],
                )
            except Exception as exc:  # a filter that matches nothing is an error on some versions
                if where is queries[0]:
                    raise
                del exc
                continue
            for mid, doc, meta, dist in zip(
                result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0]
            ):
                seen.setdefault(mid, (doc, meta, dist))
        now = datetime.now(timezone.utc)
        recalled = []
        for mid, (doc, meta, dist) in seen.items():
            memory = _from_chroma(mid, doc, meta)
            recalled.append(score_memory(memory, 1.0 - float(dist), facets, now))
        recalled.sort(key=lambda r: (-r.score, r.memory.id))
        return recalled[:k]

    def close(self) -> None:
        """Release the client kept for this store's folder (the next operation opens a fresh one)."""
        with self._thread_lock:
            if self._depth == 0:
                self._release_client()
                kept = _KEPT.pop(self._key, None)
                if kept is not None:
                    _stop_client(kept.client)


class _Kept:
    """A client kept open between operations on one folder, and the store generation it is current for."""

    __slots__ = ("client", "collection", "generation")

    def __init__(self, client: ClientAPI, collection: Collection, generation: str) -> None:
        self.client, self.collection, self.generation = client, collection, generation


# One kept client per memory folder per process, shared by every MemoryStore on that folder (Chroma itself
# shares one engine per path inside a process, so two kept clients on one path would be one engine anyway).
_KEPT: dict[str, _Kept] = {}
# folders; a kept client holds its index in memory (100k memories x 384 float32 = 154 MB of vectors)
MAX_KEPT = 4
# Clients inherited through fork(): never used or stopped in the child, whose copy of the engine is not its own.
_INHERITED: list[_Kept] = []


def _forget_kept_after_fork() -> None:
    _INHERITED.extend(_KEPT.values())
    _KEPT.clear()


os.register_at_fork(after_in_child=_forget_kept_after_fork)


def _stop_kept_clients() -> None:
    """At exit, stop every kept client here rather than leave its engine to the interpreter's teardown,
    which the CLI skips (agent.cli.console_main)."""
    while _KEPT:
        _, kept = _KEPT.popitem()
        with contextlib.suppress(Exception):  # exiting anyway; the store's files are already consistent
            _stop_client(kept.client)


atexit.register(_stop_kept_clients)


def _stop_client(client: ClientAPI) -> None:
    """Close a client and stop Chroma's engine for its path, so the next open re-reads the disk.

    Measured with chromadb 1.5.9: stopping a client whose view is stale (another process wrote 3,000
    records since, this one holding 1,500 of its own) changes no file in the store."""
    try:
        client.close()
    finally:
        from chromadb.api.shared_system_client import SharedSystemClient

        ident = getattr(client, "_identifier", None)
        system = SharedSystemClient._identifier_to_system.pop(ident, None) if ident else None
        SharedSystemClient._identifier_to_refcount.pop(ident, None)
        if system is not None:
            with contextlib.suppress(Exception):  # already stopped
                system.stop()


def _read_generation(path: Path) -> str | None:
    try:
        return (path / GENERATION_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage_error(exc, str(path)) from None


def _write_generation(path: Path) -> str:
    """A new random generation for the store, written atomically (under the store's lock)."""
    generation = f"{os.getpid()}-{time.time_ns()}-{random.getrandbits(32):08x}"
    tmp = path / f"{GENERATION_FILE}.tmp{os.getpid()}"
    try:
        tmp.write_text(generation + "\n")
        os.replace(tmp, path / GENERATION_FILE)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise storage_error(exc, str(path)) from None
    return generation


_STARTER_VECTORS: dict[str, list[list[float]]] = {}


def _starter_embeddings(embedder: HashingEmbedder, memories: Sequence[Memory]) -> list[list[float]] | None:
    """The starters' embeddings, a pure function of the embedder and the texts: computed once, then read
    back from this process or from the cache dir (``starter-embeddings-<hash>.marshal``; an unreadable,
    damaged or mis-shaped file is recomputed). None for an embedder of another type (embedded fresh)."""
    if type(embedder) is not HashingEmbedder or not memories:
        return None
    h = hashlib.sha256(f"{type(embedder).__qualname__}\0{embedder.name}\0{embedder.dimension}".encode())
    for module in (HashingEmbedder.__module__, "agent.compress"):  # its code (and its tokenizer's) is key
        with contextlib.suppress(OSError, KeyError, TypeError):
            h.update(Path(sys.modules[module].__file__).read_bytes())  # type: ignore[arg-type]
    for m in memories:
        h.update(b"\0" + m.text.encode())
    key = h.hexdigest()[:20]
    if (hit := _STARTER_VECTORS.get(key)) is not None:
        return hit
    from agent.diskcache import cache_dir, load_marshal, save_marshal

    base = cache_dir()
    path = base / f"starter-embeddings-{key}.marshal" if base is not None else None
    vectors = load_marshal(path)  # checksummed: a damaged file reads as None
    if not (
        isinstance(vectors, list)
        and len(vectors) == len(memories)
        and all(isinstance(v, list) and len(v) == embedder.dimension for v in vectors)
    ):
        vectors = embedder.embed([m.text for m in memories])
        if path is not None:  # a read-only cache dir costs speed only
            save_marshal(path, vectors, prefix=".starter-embeddings-")
    _STARTER_VECTORS[key] = vectors
    return vectors


def _matches(memory: Memory, cutoff: datetime | None, kind: str | None, where: dict[str, str]) -> bool:
    if kind and memory.kind != kind:
        return False
    if cutoff is not None:
        try:
            if datetime.fromisoformat(memory.updated_at) >= cutoff:
                return False
        except ValueError:
            pass
    for key, wanted in where.items():
        value = memory.metadata.get(key)
        if isinstance(value, list):
            if wanted not in [str(v) for v in value]:
                return False
        elif str(value) != wanted and not (isinstance(value, bool) and str(value).lower() == wanted.lower()):
            return False
    return True


def score_memory(memory: Memory, similarity: float, facets: set[str], now: datetime) -> RecalledMemory:
    mf = memory_facets(memory.metadata)
    # a memory with no structured facets (a plain learning) neither gains nor loses on overlap
    overlap = _weighted_jaccard(facets, mf) if facets and mf else 0.5 * bool(facets)
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


FACET_WEIGHTS = {"source": 1.0, "target": 1.0, "pattern": 1.0, "compliance": 0.5}


def _weighted_jaccard(a: set[str], b: set[str]) -> float:
    def w(facets: set[str]) -> float:
        return sum(FACET_WEIGHTS.get(f.split(":", 1)[0], 1.0) for f in facets)

    return w(a & b) / w(a | b)


def storage_error(exc: BaseException, location: str) -> MemoryStoreError:
    """A Chroma or OS failure during an operation, as one clear error; nothing of the operation is kept."""
    import errno

    text = str(exc)
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text or "disk is full" in text:
        return MemoryStoreError(
            "the disk is full; the memory operation was not stored",
            path=location,
            hint="free space and run again; the store is unchanged",
        )
    if "database is locked" in text or "busy" in text.lower():
        return MemoryStoreError("the memory store is busy", path=location, hint="retry in a moment")
    return MemoryStoreError(f"the memory operation failed: {text[:200]}", path=location, hint=REBUILD_HINT)


def parse_export(text: str, path: str | Path) -> list[Memory]:
    """The memories of an export (``data-agent memory export``, one JSON object per line), every line
    validated before anything is stored; the first bad line is named."""
    from pydantic import ValidationError

    memories = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            memories.append(Memory.model_validate_json(line))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or None
            raise MemoryStoreError(
                f"invalid memory on line {number}: {first.get('msg')}; nothing was imported",
                path=path,
                line=number,
                field=field,
            ) from None
    return memories


def rebuild_store(path: Path, *, export: Path | None = None, bundles: Sequence[Path] = ()) -> dict[str, Any]:
    """Move a damaged embedded store aside and build a new one from an export and/or saved bundles."""
    from agent.models import Design

    memories: list[Memory] = []
    if export is not None:
        try:
            memories = parse_export(export.read_text(encoding="utf-8"), export)
        except OSError as exc:
            raise MemoryStoreError(f"cannot read the export: {exc.strerror}", path=export) from None
    designs: list[tuple[Design, str]] = []
    for root in bundles:
        for found in sorted(Path(root).rglob("design.json")):
            try:
                designs.append(
                    (Design.model_validate_json(found.read_text(encoding="utf-8")), str(found.parent))
                )
            except Exception as exc:
                raise MemoryStoreError(f"not a readable design: {str(exc)[:120]}", path=found) from None
    if not memories and not designs:
        raise MemoryStoreError("nothing to rebuild from: give --from-export FILE and/or --from-bundles DIR")
    moved = None
    if path.exists():
        moved = path.with_name(f"{path.name}.damaged-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
        os.rename(path, moved)
    store = MemoryStore(path, seed=not memories)
    if memories:
        store.import_memories(memories)
    store.remember_designs(designs)
    return {
        "path": str(path),
        "moved_aside": str(moved) if moved else None,
        "imported": len(memories),
        "designs": len(designs),
        "count": store.count(),
    }


def design_memory(design: Design, *, bundle: str | None = None) -> Memory:
    """The memory a design is remembered as: a summary text and its structured metadata."""
    meta = design_metadata(design)
    if bundle:
        meta["bundle"] = bundle
    return Memory(id=f"design-{design.id}", kind="design", text=design_memory_text(design), metadata=meta)


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
