"""Shared fixtures: an isolated user (memory, data dir, HOME) per test, and the CLI run as a subprocess.

Every CLI test runs ``python -m agent`` in a child process with an environment of its own, so nothing a test
does reaches the real user's memory store or data directory, and what is tested is what a user runs.
A design run costs seconds, so the designs the CLI tests inspect are made once per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SCHEMAS = REPO.parent / "shared" / "schemas"

# Variables that would point a run at the real user's state or at a network service.
_SCRUB = (
    "DATA_AGENT_MEMORY_DIR",
    "DATA_AGENT_MEMORY_URL",
    "DATA_AGENT_CONTEXT",
    "CLAUDE_PLUGIN_DATA",
    "ANTHROPIC_API_KEY",
    "XDG_DATA_HOME",
)


_SESSION_BASE: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    """In-process code under test never reads or writes the real user's data, cache or memory."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="data-agent-tests-"))
    _SESSION_BASE.append(base)
    for key in _SCRUB:
        os.environ.pop(key, None)
    os.environ.update(
        DATA_AGENT_CACHE_DIR=str(base / "cache"),
        DATA_AGENT_MEMORY_DIR=str(base / "memory"),
        XDG_DATA_HOME=str(base / "xdg-data"),
        XDG_CACHE_HOME=str(base / "xdg-cache"),
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    for base in _SESSION_BASE:
        shutil.rmtree(base, ignore_errors=True)


def isolated_env(home: Path) -> dict[str, str]:
    """The current environment with every user-state location moved under ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(
        DATA_AGENT_MEMORY_DIR=str(home / "memory"),
        XDG_DATA_HOME=str(home / "xdg-data"),
        XDG_CACHE_HOME=str(home / "xdg-cache"),
        XDG_CONFIG_HOME=str(home / "xdg-config"),
        HOME=str(home),
        # the packages live in the interpreter's site-packages; keep the user site (under the real HOME)
        # out of the picture so the child sees exactly what the interpreter ships
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        NO_COLOR="1",
        COLUMNS="120",
    )
    return env


@dataclass
class Cli:
    """Runs ``python -m agent ARGS`` in ``cwd`` with ``env``."""

    env: dict[str, str]
    cwd: Path

    def __call__(self, *args: str | Path, timeout: float = 180, **kw: Any) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "agent", *map(str, args)],
            cwd=kw.pop("cwd", self.cwd),
            env=kw.pop("env", self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )

    def json(self, *args: str | Path) -> Any:
        """Run with ``--json``; assert success and that stdout is exactly one JSON object."""
        proc = self(*args, "--json")
        assert proc.returncode == 0, proc.stderr
        return one_json_object(proc.stdout)


def one_json_object(stdout: str) -> dict[str, Any]:
    """The single JSON object that is the whole of ``stdout`` (raw_decode proves nothing trails it)."""
    text = stdout.strip()
    obj, end = json.JSONDecoder().raw_decode(text)
    assert end == len(text), f"more than one JSON value on stdout: {text[end : end + 200]!r}"
    assert isinstance(obj, dict), f"stdout is a JSON {type(obj).__name__}, not an object"
    return obj


def bundle_files(root: Path, *, manifest: bool = True) -> dict[str, bytes]:
    """Every file under ``root``, by relative path; ``manifest=False`` leaves out manifest.json, which
    carries timings."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (manifest or p.relative_to(root).as_posix() != "manifest.json")
    }


def leftovers(parent: Path) -> list[str]:
    """What an interrupted or failed bundle write could leave beside its target: staging or swapped-out
    folders."""
    return [p.name for p in parent.iterdir() if p.name.endswith(".tmp") or ".old-" in p.name]


def record_parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the policy files parsed from now on (steering.parse_policy_bytes), in order."""
    from agent import steering

    parsed: list[str] = []
    original = steering.parse_policy_bytes
    monkeypatch.setattr(
        steering,
        "parse_policy_bytes",
        lambda raw, path, root=None, **kw: parsed.append(path.name) or original(raw, path, root, **kw),
    )
    return parsed


def record_counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first text of each batch of texts whose tokens are counted from now on (tokens.count_many): for
    a policy file's facts, its first clause line."""
    from agent import tokens

    counted: list[str] = []
    original = tokens.count_many
    monkeypatch.setattr(
        tokens, "count_many", lambda texts, *a, **kw: counted.extend(texts[:1]) or original(texts, *a, **kw)
    )
    return counted


def assert_clean_failure(proc: subprocess.CompletedProcess, *, out: Path | None = None) -> str:
    """A failed command: non-zero exit, one ``data-agent: error:`` line on stderr and no traceback, and
    (given ``out``) no bundle and nothing half-written beside it. Returns the error line."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {proc.stderr!r}"
    assert lines[0].startswith("data-agent: error: ")
    if out is not None:
        assert not out.exists(), f"{out} was created by a failed run"
        assert leftovers(out.parent) == []
    return lines[0]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh user for this test: memory, data dir and HOME under tmp_path, also for in-process code."""
    home = tmp_path / "home"
    home.mkdir()
    for key, value in isolated_env(home).items():
        monkeypatch.setenv(key, value)
    for key in _SCRUB:
        if key not in ("DATA_AGENT_MEMORY_DIR", "XDG_DATA_HOME"):
            monkeypatch.delenv(key, raising=False)
    return home


@pytest.fixture
def memory_dir(home: Path) -> Path:
    return home / "memory"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty current directory (so no ./.claude/steering of the checkout is picked up)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd


@pytest.fixture
def run_cli(home: Path, workdir: Path) -> Cli:
    return Cli(env=isolated_env(home), cwd=workdir)


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("session-home")


@pytest.fixture(scope="session")
def session_cli(session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """One isolated user shared by the session's design runs (its memory grows across them)."""
    return Cli(env=isolated_env(session_home), cwd=tmp_path_factory.mktemp("session-cwd"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def schemas() -> Path:
    if not SCHEMAS.is_dir():
        pytest.skip(f"official schemas not found at {SCHEMAS} (they live beside the checkout, in shared/)")
    return SCHEMAS


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a file under tmp_path/inputs and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return _write


def forget_caches() -> None:
    """Forget the policy and packing caches held in memory, as a new process would (the disk stays)."""
    from agent import compress, steering

    steering._CACHE.clear()
    steering._DISK.reset()
    compress._FACTS.reset()
    compress._LOADED.clear()


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private cache directory, with nothing of the caches held in memory before or after the test."""
    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", str(tmp_path / "cache"))
    forget_caches()
    yield tmp_path / "cache"
    forget_caches()
