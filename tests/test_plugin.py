"""The repository as a Claude Code plugin: structural checks, the SessionStart hook, and the real CLI.

The real-CLI test runs .ci/plugin-check.sh, which installs @anthropic-ai/claude-code from npm into a cache
outside the repository and runs `claude plugin validate / marketplace add / install / details` with HOME
set to a temporary directory. It skips, saying why, when the CLI cannot be installed or found.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / ".claude-plugin"
AGENTS = ("data-engineer", "security-engineer", "devops-engineer", "qa-engineer")
MCP_TOOLS = (
    "pack_context",
    "recall_designs",
    "plan_design",
    "check_design",
    "plan_delegations",
    "remember_design",
    "rate_memory",
)


def manifest() -> dict:
    return json.loads((PLUGIN / "plugin.json").read_text())


def front_matter(path: Path) -> tuple[dict, str]:
    text = path.read_text()
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, flags=re.S)
    assert match, f"{path} has no front matter"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_manifest_and_marketplace() -> None:
    plugin = manifest()
    assert plugin["name"] == "data-agent"
    from agent import __version__

    assert plugin["version"] == __version__
    market = json.loads((PLUGIN / "marketplace.json").read_text())
    assert market["owner"]["name"]
    entry = next(p for p in market["plugins"] if p["name"] == "data-agent")
    assert entry["source"] == "./" and entry.get("version", plugin["version"]) == plugin["version"]
    # every path is relative to the plugin root and exists
    paths = [plugin["commands"], plugin["mcpServers"]]
    for p in paths:
        assert p.startswith("./"), p
        assert (REPO / p).exists(), p
    # hooks/hooks.json is loaded automatically; naming it in the manifest is a load error
    assert "hooks" not in plugin and (REPO / "hooks" / "hooks.json").exists()


def test_agents() -> None:
    # The agents are kept in prompts/agents; `agents` at the plugin root is a symlink to that folder, the
    # default location Claude Code scans (its inventory counts only that folder, not manifest-listed files).
    assert "agents" not in manifest()
    assert (REPO / "agents").is_symlink() and (REPO / "agents").resolve() == (
        REPO / "prompts" / "agents"
    ).resolve()
    listed = {p.stem: p for p in sorted((REPO / "agents").glob("*.md"))}
    assert set(listed) == set(AGENTS)
    for name, path in listed.items():
        meta, body = front_matter(path)
        assert meta["name"] == name and len(meta["description"]) > 40
        assert "hooks" not in meta and "mcpServers" not in meta and "permissionMode" not in meta
        assert len(body) > 300
    meta, body = front_matter(listed["data-engineer"])
    tools = [t.strip() for t in meta["tools"].split(",")]
    for tool in MCP_TOOLS:
        assert f"mcp__plugin_data-agent_data-agent__{tool}" in tools
    assert {"Bash", "Read"} <= set(tools)
    for step in ("pack_context", "recall_designs", "plan_design", "remember_design"):
        assert step in body
    for section in ("Architecture", "Pipelines", "Storage", "Processing", "Quality", "Documentation"):
        assert f"**{section}" in body
    for stage in (
        "sources and requirements",
        "architecture and data flow",
        "technologies",
        "quality framework",
        "monitoring and alerting",
        "lineage and governance",
    ):
        assert stage in body
    assert "```json" in body and "waves" in body


def test_design_command() -> None:
    command = REPO / manifest()["commands"] / "design.md"
    meta, body = front_matter(command)
    assert meta["description"] and meta["argument-hint"]
    assert "$ARGUMENTS" in body and "data-agent:data-engineer" in body
    assert "ONE message" in body and "data-agent delegate" in body


def test_mcp_server_entry() -> None:
    servers = json.loads((REPO / manifest()["mcpServers"]).read_text())["mcpServers"]
    entry = servers["data-agent"]
    assert entry["command"] == "${CLAUDE_PLUGIN_ROOT}/bin/data-agent" and entry["args"] == ["mcp"]
    # Claude Code sets CLAUDE_PLUGIN_ROOT/DATA itself and does not expand them inside `env`: an entry there
    # would replace the real paths with the literal "${...}" text.
    env = entry.get("env", {})
    assert "CLAUDE_PLUGIN_ROOT" not in env and "CLAUDE_PLUGIN_DATA" not in env
    assert os.access(REPO / "bin" / "data-agent", os.X_OK)


def test_hooks_config() -> None:
    hooks = json.loads((REPO / "hooks" / "hooks.json").read_text())["hooks"]
    start = hooks["SessionStart"][0]["hooks"][0]
    assert "${CLAUDE_PLUGIN_ROOT}/hooks/session-start.sh" in start["command"]
    assert start["timeout"] >= 300
    sub = hooks["SubagentStart"][0]
    assert sub["matcher"] == "data-agent:data-engineer"


BASH = shutil.which("bash") or "/bin/bash"  # resolved here: some tests run the hook with a bare PATH


def _hook(env: dict[str, str], script: str = "session-start.sh") -> subprocess.CompletedProcess:
    return subprocess.run(
        [BASH, str(REPO / "hooks" / script)], env=env, capture_output=True, text=True, timeout=60
    )


def _fake_venv(data: Path, version: str) -> None:
    bin_dir = data / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("data-agent", "python"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    (data / "venv" / ".data-agent-version").write_text(version)


def test_session_start_is_a_no_op_when_current(tmp_path: Path) -> None:
    """When the venv matches the plugin version the hook starts no Python and installs nothing; that is
    what makes it fast (its time is measured by benchmarks/performance, not asserted here)."""
    data = tmp_path / "data"
    _fake_venv(data, manifest()["version"])
    spy_bin = tmp_path / "spy"
    spy_bin.mkdir()
    calls = tmp_path / "python-calls"
    for name in ("python3", "python", "pip"):
        (spy_bin / name).write_text(f"#!/bin/sh\necho {name} >> {calls}\nexit 0\n")
        (spy_bin / name).chmod(0o755)
    env = {
        **os.environ,
        "CLAUDE_PLUGIN_ROOT": str(REPO),
        "CLAUDE_PLUGIN_DATA": str(data),
        "PATH": f"{spy_bin}:{os.environ['PATH']}",
    }
    before = sorted(p.name for p in data.rglob("*"))
    for _ in range(3):
        proc = _hook(env)
        assert proc.returncode == 0 and proc.stdout == ""
    assert not calls.exists(), calls.read_text()
    assert sorted(p.name for p in data.rglob("*")) == before


def _tools_without_python(tmp_path: Path) -> Path:
    """A PATH folder with the tools the hook needs and no Python at all."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("sed", "head", "cat", "tr", "mkdir", "date", "dirname", "rmdir", "sleep"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    return tools


def _message_with_only(tools: Path, tmp_path: Path) -> str:
    """Run SessionStart with nothing but ``tools`` on PATH; it must exit 0 and say what to do."""
    env = {
        "PATH": str(tools),
        "HOME": str(tmp_path),
        "CLAUDE_PLUGIN_ROOT": str(REPO),
        "CLAUDE_PLUGIN_DATA": str(tmp_path / "data"),
    }
    proc = _hook(env)
    assert proc.returncode == 0
    return json.loads(proc.stdout)["systemMessage"]


def test_session_start_says_when_python_is_missing(tmp_path: Path) -> None:
    message = _message_with_only(_tools_without_python(tmp_path), tmp_path)
    assert "python3 was not found" in message and "3.10" in message


def test_session_start_says_when_python_is_too_old(tmp_path: Path) -> None:
    tools = _tools_without_python(tmp_path)
    old = tools / "python3"
    old.write_text('#!/bin/sh\ncase "$*" in *"print"*) echo 3.8;; *) exit 1;; esac\n')
    old.chmod(0o755)
    message = _message_with_only(tools, tmp_path)
    assert "version 3.8" in message and "3.10" in message


def test_session_start_says_when_the_venv_cannot_be_created(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    broken = tools / "python3"
    # a new-enough python whose venv module fails
    broken.write_text(
        '#!/bin/sh\nif [ "$1" = "-m" ]; then echo "No module named venv" >&2; exit 1; fi\nexit 0\n'
    )
    broken.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{tools}:{os.environ['PATH']}",
        "DATA_AGENT_PYTHON": str(broken),
        "CLAUDE_PLUGIN_ROOT": str(REPO),
        "CLAUDE_PLUGIN_DATA": str(tmp_path / "data"),
    }
    proc = _hook(env)
    assert proc.returncode == 0
    message = json.loads(proc.stdout)["systemMessage"]
    assert "could not create a virtual environment" in message and "install.log" in message
    assert not (tmp_path / "data" / ".install.lock").exists()


def test_subagent_start_summary_is_short() -> None:
    proc = _hook(dict(os.environ), "subagent-start.sh")
    assert proc.returncode == 0
    out = json.loads(proc.stdout)
    context = out["hookSpecificOutput"]["additionalContext"]
    assert out["hookSpecificOutput"]["hookEventName"] == "SubagentStart"
    assert 100 < len(proc.stdout) < 10_000 and "pack_context" in context


def test_bin_wrapper_explains_a_missing_runtime(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CLAUDE_PLUGIN_DATA": str(tmp_path / "data")}
    proc = subprocess.run(
        [str(REPO / "bin" / "data-agent"), "--version"], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 127 and "not installed yet" in proc.stderr


@pytest.mark.slow
def test_real_claude_code_cli() -> None:
    if not shutil.which("bash"):
        pytest.skip("bash is not available")
    if not (shutil.which("npm") or shutil.which("claude") or os.environ.get("CLAUDE_BIN")):
        pytest.skip("neither npm nor a claude binary is available to install/find Claude Code")
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "plugin-check.sh"), str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for agent in AGENTS:
        assert f"agent {agent}" in proc.stdout
    assert "command /data-agent:design" in proc.stdout and "MCP server data-agent" in proc.stdout
