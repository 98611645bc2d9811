"""Load the organisation's steering policies from a context directory.

Formats: Markdown with or without YAML front matter, YAML rule files, plain text. Each document is split
into sections and normative clauses; a clause id is ``<policy>.<section-slug>.<n>`` so it stays stable
across runs and can be cited by design decisions. A broken file is reported by path and line and the rest
still loads; only when nothing at all loads is it an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import yaml

from agent import yamlio
from agent.diskcache import PickleCache, cache_dir
from agent.errors import PolicyError
from agent.models import LoadProblem, Policy, PolicyRule, PolicySection, slugify

MAX_POLICY_BYTES = 5_000_000
POLICY_SUFFIXES = {".md", ".markdown", ".yaml", ".yml", ".txt", ".text"}
CONVENTIONAL_DIRS = (Path(".claude/context-engg-system-steering"), Path(".claude/steering"))

# Order matters: longer phrases first so "MUST NOT" is never read as "MUST".
MODALITIES = ("MUST NOT", "SHALL NOT", "SHOULD NOT", "MUST", "SHALL", "SHOULD", "MAY", "REQUIRED", "NEVER")
_NORMATIVE = re.compile(
    rf"\b({'|'.join(MODALITIES)})\b"
    r"|\b(required|never|at least|at most|within|no later than|is mandatory|are mandatory)\b"
)
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.S)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)$")
_SCOPE_LINE = re.compile(r"^\s*(?:applies to|scope)\s*:\s*(.+)$", re.I)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


@dataclass
class PolicySet:
    """What a context directory yielded: the policies, the problems, and where they came from."""

    root: Path
    policies: list[Policy] = field(default_factory=list)
    problems: list[LoadProblem] = field(default_factory=list)
    # one per policy, parallel to ``policies``: "<absolute path>:<sha256 of its bytes>", which (with the
    # parser's version) determines the parsed Policy; the packer keys its persistent index cache on it
    sources: list[str] = field(default_factory=list)

    @property
    def rules(self) -> list[PolicyRule]:
        return [r for p in self.policies for r in p.rules]

    def rule(self, rule_id: str) -> PolicyRule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def policy(self, policy_id: str) -> Policy | None:
        return next((p for p in self.policies if p.id == policy_id), None)


def resolve_context_dir(explicit: str | Path | None = None, cwd: Path | None = None) -> Path:
    """--context DIR, then $DATA_AGENT_CONTEXT, then the conventional folders, then the packaged defaults."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("DATA_AGENT_CONTEXT"):
        return Path(env)
    base = cwd or Path.cwd()
    for rel in CONVENTIONAL_DIRS:
        if (base / rel).is_dir():
            return base / rel
    from agent.resources import shipped

    return shipped("context")


# The parse cache: a path whose mtime, size and content hash are unchanged is not parsed again. It lives
# in this process (``_CACHE``) and on disk (one pickle in ``diskcache.cache_dir()``, keyed by the parser's
# own source hash so a new version never reads an old format; the context command's whole-directory index
# bypasses both, ``keep=False``, and keeps per-file facts of its own). A stat match (mtime_ns, size,
# ctime_ns, inode) is trusted: any write, rename or chmod moves ctime, which no user call can set back, so an
# edit is seen even when mtime and size are restored. A stat change with the same sha256 (a touch, a
# checkout) is a hit too. The disk file is written
# atomically (temp file + rename) only when something changed; an unreadable file is ignored and rebuilt.
_Entry = tuple[tuple[int, int, int, int], str, "Policy | None", list[LoadProblem]]
_CACHE: dict[str, _Entry] = {}


def _parser_key() -> str:
    h = hashlib.sha256()
    for mod in (__file__, Path(__file__).with_name("models.py")):
        with contextlib.suppress(OSError):
            h.update(Path(mod).read_bytes())
    return h.hexdigest()[:16]


def cache_file() -> Path | None:
    """The persistent parse cache, or None when disabled (``DATA_AGENT_CACHE_DIR=off``)."""
    base = cache_dir()
    return base / f"policies-{_parser_key()}.pkl" if base is not None else None


_DISK = PickleCache(cache_file, prefix=".policies-")


def _remember(key: str, entry: _Entry) -> None:
    _CACHE[key] = entry
    _DISK.put(key, entry)


def load_policies(context: str | Path | None = None) -> PolicySet:
    root, files, problems = scan(context)
    return load_scanned(root, files, problems)


def scan(context: str | Path | None = None) -> tuple[Path, list[Path], list[LoadProblem]]:
    """The context directory, its policy files in load order, and what the walk found wrong."""
    root, names, problems = scan_names(context)
    return root, [Path(n) for n in names], problems


def scan_names(context: str | Path | None = None) -> tuple[Path, list[str], list[LoadProblem]]:
    """``scan`` with the files as path strings: a caller that only stats them builds no Path objects."""
    root = resolve_context_dir(context)
    if not root.exists():
        raise PolicyError(
            "context directory does not exist",
            path=root,
            hint="pass --context DIR or omit it to use the packaged policies",
        )
    if not root.is_dir():
        raise PolicyError("context path is not a directory", path=root)
    problems: list[LoadProblem] = []
    names = _walk(root, problems)
    if not names:
        raise PolicyError("no policy files found (.md, .yaml, .yml, .txt)", path=root)
    return root, names, problems


def load_scanned(root: Path, files: list[Path], problems: list[LoadProblem]) -> PolicySet:
    """Load the files ``scan`` found; ``problems`` (the walk's) are kept first, as load_policies reports."""
    result = PolicySet(root=root, problems=problems)
    loaded = [_load_policy_file(path, root) for path in files]
    kept = keep_unique(files, [(p.id if p else None, found) for _, (p, found) in loaded], problems)
    result.policies = [loaded[n][1][0] for n in kept]  # type: ignore[misc]
    result.sources = [loaded[n][0] for n in kept]
    _DISK.flush()
    if not kept:
        raise nothing_loaded(root, problems)
    return result


def keep_unique(
    files: Sequence[Path | str],
    outcomes: list[tuple[str | None, list[LoadProblem]]],
    problems: list[LoadProblem],
) -> list[int]:
    """Which files' policies are kept, given each file's policy id (None: it yielded none) and problems,
    in load order: the first file with an id wins and a later one is reported. Appends to ``problems``."""
    seen_ids: dict[str, str] = {}
    kept: list[int] = []
    for n, (path, (policy_id, found)) in enumerate(zip(files, outcomes)):
        problems.extend(found)
        if policy_id is None:
            continue
        if policy_id in seen_ids:
            problems.append(
                LoadProblem(
                    path=str(path),
                    line=1,
                    message=(
                        f"duplicate policy id {policy_id!r} (also in {seen_ids[policy_id]}); this file was skipped"
                    ),
                )
            )
            continue
        seen_ids[policy_id] = str(path)
        kept.append(n)
    return kept


def nothing_loaded(root: Path, problems: list[LoadProblem]) -> PolicyError:
    detail = "; ".join(str(p) for p in problems[:3]) or "no normative clauses"
    return PolicyError(f"no policy could be loaded ({detail})", path=root)


def _walk(root: Path, problems: list[LoadProblem]) -> list[str]:
    """Files under root, sorted, following symlinks once and reporting loops instead of hanging."""
    visited: set[tuple[int, int]] = set()
    # each folder with its path components below root: a file's sort key is its folder's plus its name,
    # which orders files as pathlib does (by component) without pathlib parsing each path
    stack: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    out: list[tuple[tuple[str, ...], str]] = []
    while stack:
        folder, below = stack.pop()
        try:
            st = folder.stat()
        except OSError as exc:
            problems.append(LoadProblem(path=str(folder), message=f"cannot read: {exc.strerror or exc}"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in visited:
            problems.append(
                LoadProblem(path=str(folder), message="symlink loop; skipped", severity="warning")
            )
            continue
        visited.add(key)
        try:
            # scandir: the directory entry's own type answers is_dir/is_file for everything but
            # symlinks, so a folder of thousands of files costs no stat per file here
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problems.append(LoadProblem(path=str(folder), message=f"cannot list: {exc.strerror or exc}"))
            continue
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                if not entry.is_symlink():
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((Path(entry.path), (*below, name)))
                    elif (
                        entry.is_file(follow_symlinks=False)
                        and os.path.splitext(name)[1].lower() in POLICY_SUFFIXES
                    ):
                        out.append(((*below, name), entry.path))
                    continue
                path = Path(entry.path)  # a symlink: pathlib's rules (a loop or a dangling link is reported)
                if path.is_dir():
                    stack.append((path, (*below, name)))
                elif path.is_file() and path.suffix.lower() in POLICY_SUFFIXES:
                    out.append(((*below, name), entry.path))
                elif not path.exists():
                    problems.append(
                        LoadProblem(
                            path=str(path),
                            message="broken symlink or symlink loop; skipped",
                            severity="warning",
                        )
                    )
            except OSError as exc:
                problems.append(LoadProblem(path=entry.path, message=f"cannot read: {exc.strerror or exc}"))
    out.sort()
    return [path for _, path in out]


def stat_stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What a file's cached parse is valid for (see the parse cache above); the directory index uses it
    too, so the two caches agree on what "unchanged" means."""
    return (st.st_mtime_ns, st.st_size, st.st_ctime_ns, st.st_ino)


class _Models(NamedTuple):
    """What the parser builds a policy from: the pydantic models, or plain namespaces of the same fields."""

    policy: Callable[..., Any]
    section: Callable[..., Any]
    rule: Callable[..., Any]


_PYDANTIC = _Models(Policy, PolicySection, PolicyRule)
# For a caller that reads a parsed policy once and keeps nothing of it (the packing index's loader):
# pydantic would only re-check values the parser has already typed, ~20 µs a file (48 ms of each of
# the two loaders' 2,500 files at 5,000).
_PLAIN = _Models(SimpleNamespace, SimpleNamespace, SimpleNamespace)


def _load_policy_file(
    path: Path, root: Path | None, *, keep: bool = True
) -> tuple[str, tuple[Policy | None, list[LoadProblem]]]:
    """The file's cache identity ("<absolute path>:<sha256>", or "" when unread) and what it yielded.
    ``keep=False``, for a caller that keeps its own digest of what is parsed (the packing index's loader):
    the parse cache's disk file is neither read nor written (pickling ~100k policy models cost 0.4 s of a
    cold run over 5,000 files), nothing parsed is kept in this process (holding 5,000 files' models cost
    ~20k page faults per 2,500 files), and it comes as plain namespaces with the models' fields (_PLAIN)."""
    try:
        st = path.stat()
    except OSError as exc:
        return "", (None, [LoadProblem(path=str(path), message=f"cannot read: {exc.strerror or exc}")])
    if st.st_size > MAX_POLICY_BYTES:
        return "", (
            None,
            [
                LoadProblem(
                    path=str(path),
                    message=(
                        f"file is {st.st_size:,} bytes, over the {MAX_POLICY_BYTES:,}-byte limit for a policy; skipped"
                    ),
                )
            ],
        )
    stamp = stat_stamp(st)
    key = str(path.absolute())
    cached = _CACHE.get(key)
    if cached and cached[0] == stamp:
        return f"{key}:{cached[1]}", _copy(cached)
    if cached is None and keep and (cached := _DISK.data().get(key)) and cached[0] == stamp:
        _CACHE[key] = cached
        return f"{key}:{cached[1]}", _copy(cached)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return "", (None, [LoadProblem(path=str(path), message=f"cannot read: {exc.strerror or exc}")])
    digest = hashlib.sha256(raw).hexdigest()
    if cached and cached[1] == digest:
        if keep:
            _remember(key, (stamp, digest, cached[2], cached[3]))
        return f"{key}:{digest}", _copy(cached)
    entry = (stamp, digest, *parse_policy_bytes(raw, path, root, plain=not keep))
    if keep:
        _remember(key, entry)
    return f"{key}:{digest}", _copy(entry)


def _copy(entry: _Entry) -> tuple[Policy | None, list[LoadProblem]]:
    """The cached Policy is shared, not copied (a deep copy costs more than the parse): treat loaded
    policies as read-only, or ``model_copy(deep=True)`` before changing one."""
    return entry[2], list(entry[3])


def parse_policy_bytes(
    raw: bytes, path: Path, root: Path | None = None, *, plain: bool = False
) -> tuple[Policy | None, list[LoadProblem]]:
    """The policy in a file's bytes (None when it holds none) and its problems; ``plain``: as namespaces
    with the models' fields instead of pydantic models (see _PLAIN)."""
    models = _PLAIN if plain else _PYDANTIC
    if b"\x00" in raw[:8192]:
        return None, [LoadProblem(path=str(path), message="binary file (contains NUL bytes); skipped")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return None, [LoadProblem(path=str(path), line=line, message="not UTF-8 text; skipped")]
    default_id = slugify(path.stem).replace("_", "-")
    if path.suffix.lower() in (".yaml", ".yml"):
        return _parse_yaml_policy(text, path, default_id, models)
    if path.suffix.lower() in (".md", ".markdown"):
        return _parse_markdown_policy(text, path, default_id, models)
    return _parse_plain_policy(text, path, default_id, models)


def _front_matter(text: str, path: Path) -> tuple[dict, str, int, list[LoadProblem]]:
    m = _FRONT_MATTER.match(text)
    if not m:
        return {}, text, 0, []
    body_offset = text[: m.end()].count("\n")
    try:
        meta = yamlio.load(m.group(1))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark else 1
        problem = getattr(exc, "problem", None) or "invalid YAML"
        return (
            {},
            text[m.end() :],
            body_offset,
            [
                LoadProblem(
                    path=str(path), line=line, message=f"broken front matter: {problem}; defaults used"
                )
            ],
        )
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        return (
            {},
            text[m.end() :],
            body_offset,
            [
                LoadProblem(
                    path=str(path),
                    line=2,
                    message=f"front matter is a {type(meta).__name__}, not a mapping; defaults used",
                )
            ],
        )
    return meta, text[m.end() :], body_offset, []


def _meta_fields(meta: dict, path: Path, default_id: str, problems: list[LoadProblem]) -> dict:
    def as_list(value: object) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [v.strip().lower() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            return [str(v).strip().lower() for v in value]
        problems.append(
            LoadProblem(
                path=str(path), line=1, message="applies_to must be a list; ignored", severity="warning"
            )
        )
        return []

    pid = str(meta.get("id") or default_id)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", pid):
        problems.append(
            LoadProblem(
                path=str(path),
                line=1,
                message=f"policy id {pid!r} is not a simple name; using {default_id!r}",
                severity="warning",
            )
        )
        pid = default_id
    return {
        "id": pid,
        "title": str(meta.get("title") or path.stem.replace("-", " ").replace("_", " ").title()),
        "kind": str(meta.get("kind") or "general"),
        "severity": str(meta.get("severity") or "error"),
        "applies_to": as_list(meta.get("applies_to")),
        "always": bool(meta.get("always", False)),
    }


def modality_of(text: str) -> str | None:
    m = _NORMATIVE.search(text)
    if not m:
        return None
    return (m.group(1) or m.group(2)).upper()


def _split_clauses(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Bullets are clauses; in prose, sentences are. Continuation lines join the bullet above."""
    clauses: list[tuple[int, str]] = []
    paragraph: list[tuple[int, str]] = []

    def flush() -> None:
        if not paragraph:
            return
        joined = " ".join(t.strip() for _, t in paragraph)
        start = paragraph[0][0]
        for sentence in _SENTENCE.split(joined):
            if sentence.strip():
                clauses.append((start, sentence.strip()))
        paragraph.clear()

    for lineno, line in lines:
        if m := _BULLET.match(line):
            flush()
            clauses.append((lineno, m.group(1).strip()))
        elif not line.strip():
            flush()
        elif clauses and not paragraph and line.startswith((" ", "\t")) and lines and clauses[-1][0] < lineno:
            clauses[-1] = (clauses[-1][0], clauses[-1][1] + " " + line.strip())
        else:
            paragraph.append((lineno, line))
    flush()
    return clauses


def _build_sections(
    pid: str,
    blocks: list[tuple[str, int, list[tuple[int, str]]]],
    always: bool,
    base_tags: list[str],
    models: _Models,
) -> list[PolicySection]:
    sections: list[PolicySection] = []
    used_slugs: dict[str, int] = {}
    for title, line, body in blocks:
        tags = list(base_tags)
        kept_lines = []
        for lineno, text in body:
            if m := _SCOPE_LINE.match(text):
                tags.extend(t.strip().lower() for t in m.group(1).split(",") if t.strip())
            else:
                kept_lines.append((lineno, text))
        base = slugify(title).replace("_", "-") or "general"
        slug, n = base, 1
        while slug in used_slugs:  # a repeated title gets -2, -3...; never collides with "Title 2"
            n += 1
            slug = f"{base}-{n}"
        used_slugs[slug] = 1
        rules = []
        for lineno, clause in _split_clauses(kept_lines):
            modality = modality_of(clause)
            if modality is None:
                continue
            rules.append(
                models.rule(
                    id=f"{pid}.{slug}.{len(rules) + 1}",
                    policy_id=pid,
                    section=title,
                    text=clause,
                    modality=modality,
                    line=lineno,
                    tags=sorted(set(tags)),
                    always=always,
                )
            )
        section_text = "\n".join(t for _, t in kept_lines).strip()
        if rules or section_text:
            sections.append(models.section(title=title, line=line, text=section_text, rules=rules))
    return sections


def _parse_markdown_policy(
    text: str, path: Path, default_id: str, models: _Models
) -> tuple[Policy | None, list[LoadProblem]]:
    meta, body, offset, problems = _front_matter(text, path)
    fields = _meta_fields(meta, path, default_id, problems)
    blocks: list[tuple[str, int, list[tuple[int, str]]]] = []
    current_title, current_line, current = "General", offset + 1, []
    for i, line in enumerate(body.splitlines(), start=offset + 1):
        if m := _HEADING.match(line):
            if len(m.group(1)) == 1 and not meta.get("title") and not blocks and not current:
                fields["title"] = m.group(2)
                continue
            if current:
                blocks.append((current_title, current_line, current))
            current_title, current_line, current = m.group(2), i, []
        else:
            current.append((i, line))
    if current:
        blocks.append((current_title, current_line, current))
    sections = _build_sections(fields["id"], blocks, fields["always"], fields["applies_to"], models)
    return _finish(fields, path, sections, problems, models)


def _parse_plain_policy(
    text: str, path: Path, default_id: str, models: _Models
) -> tuple[Policy | None, list[LoadProblem]]:
    problems: list[LoadProblem] = []
    fields = _meta_fields({}, path, default_id, problems)
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1)]
    sections = _build_sections(fields["id"], [("General", 1, lines)], False, [], models)
    return _finish(fields, path, sections, problems, models)


def _parse_yaml_policy(
    text: str, path: Path, default_id: str, models: _Models
) -> tuple[Policy | None, list[LoadProblem]]:
    try:
        node, data = yamlio.compose_and_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        return None, [
            LoadProblem(
                path=str(path),
                line=mark.line + 1 if mark else None,
                message=f"malformed YAML: {problem}; skipped",
            )
        ]
    if not isinstance(data, dict):
        return None, [LoadProblem(path=str(path), line=1, message="a YAML policy must be a mapping; skipped")]
    problems: list[LoadProblem] = []
    fields = _meta_fields(data, path, default_id, problems)
    rule_nodes = []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "rules" and isinstance(value, yaml.SequenceNode):
                rule_nodes = value.value
    raw_rules = data.get("rules") or []
    if not isinstance(raw_rules, list):
        return None, [LoadProblem(path=str(path), line=1, message="'rules' must be a list; skipped")]
    rules: list[PolicyRule] = []
    for i, item in enumerate(raw_rules):
        line = rule_nodes[i].start_mark.line + 1 if i < len(rule_nodes) else 1
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            problems.append(
                LoadProblem(path=str(path), line=line, message="a rule needs a 'text' string; skipped")
            )
            continue
        clause = " ".join(item["text"].split())
        modality = modality_of(clause) or "SHOULD"
        rid = str(item.get("id") or len(rules) + 1)
        tags = item.get("tags") or []
        rules.append(
            models.rule(
                id=f"{fields['id']}.{rid}",
                policy_id=fields["id"],
                section=str(item.get("section") or fields["title"]),
                text=clause,
                modality=modality,
                line=line,
                tags=sorted({*(str(t).lower() for t in tags), *fields["applies_to"]}),
                always=bool(item.get("always", fields["always"])),
            )
        )
    sections = [models.section(title=fields["title"], line=1, text="", rules=rules)] if rules else []
    return _finish(fields, path, sections, problems, models)


def _finish(
    fields: dict, path: Path, sections: list[PolicySection], problems: list[LoadProblem], models: _Models
) -> tuple[Policy | None, list[LoadProblem]]:
    if not any(s.rules for s in sections):
        problems.append(
            LoadProblem(
                path=str(path), message="no normative clauses found; not a policy", severity="warning"
            )
        )
        return None, problems
    return models.policy(path=str(path), sections=sections, **fields), problems
