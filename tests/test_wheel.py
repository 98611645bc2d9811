"""A wheel built from the repo, installed into a fresh venv, works from another directory.

What is under test is packaging: that prompts/, context/, memory/ and templates/ travel inside the wheel
and that the code finds them there, not in the checkout or the current directory.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO, isolated_env, one_json_object

KINDS = ("prompts", "context", "memory", "templates")


def _run(cmd: list[str | Path], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with the hatchling already installed, no download
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, REPO])
    (whl,) = dist.glob("data_engineer_agent-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    # Install the wheel alone, with this interpreter's pip targeting the new venv.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel])
    # The dependencies come from the current interpreter's site-packages through a .pth file: this keeps
    # the test offline and fast. Paths added by a .pth are appended after the venv's own site-packages,
    # and the .pth files inside them are not executed, so the host's editable install of `agent` is not
    # picked up: `agent` must come from the wheel.
    host = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (purelib / "_host_dependencies.pth").write_text("\n".join(dict.fromkeys(host)) + "\n")
    return python


def test_wheel_carries_the_shipped_folders(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for kind in KINDS:
        inside = [n for n in names if n.startswith(f"agent/_data/{kind}/")]
        shipped = [p for p in (REPO / kind).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert inside, f"{kind}/ is not in the wheel"
        assert len(inside) >= len(shipped), (
            f"{kind}/: {len(inside)} files in the wheel, {len(shipped)} in repo"
        )
    assert "agent/cli.py" in names


@pytest.mark.slow
def test_installed_wheel_designs_from_another_directory(venv_python: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = isolated_env(home)
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{venv_python.parent}{os.pathsep}{env.get('PATH', '')}"
    script = venv_python.parent / "data-agent"
    assert script.is_file(), "the console script data-agent was not installed"

    probe = _run(
        [
            venv_python,
            "-c",
            "import json, agent, agent.resources as r; "
            f"print(json.dumps({{'agent': agent.__file__, **{{k: str(r.shipped(k)) for k in {KINDS!r}}}}}))",
        ],
        cwd=cwd,
        env=env,
    )
    where = json.loads(probe.stdout)
    site_packages = Path(where["agent"]).parents[1]
    assert site_packages.is_relative_to(venv_python.parents[1]), f"agent imported from {where['agent']}"
    for kind in KINDS:
        path = Path(where[kind])
        assert path == site_packages / "agent" / "_data" / kind, (kind, path)
        assert any(path.iterdir())

    out = tmp_path / "bundle"
    proc = subprocess.run(
        [script, "design", EXAMPLES / "clickstream_lakehouse.yaml", "--out", out, "--json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = one_json_object(proc.stdout)
    assert Path(data["bundle"]) == out
    assert (out / "manifest.json").is_file() and (out / "delegations.json").is_file()
    report = data["report"]
    assert 0 < report["tokens_after_packing"] <= 4000
    assert report["policies_used"], "the packaged policies were not loaded"
    assert any(m["kind"] == "design" for m in report["memories_used"]), "the starter memories did not load"
    assert (home / "memory").is_dir(), "memory was not stored in the isolated memory dir"
    assert not (cwd / "designs").exists() and list(cwd.iterdir()) == []
