"""The ``data-agent`` command line.

Import-light on purpose: building the parser imports only argparse and the command modules, which defer
every heavy import (chromadb, anthropic, sqlglot) to the moment a command runs, so ``--help`` and
``--version`` are instant.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from agent import __version__
from agent.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data-agent",
        description="A data-engineer agent: steering-aware, memory-backed data platform designs rendered as "
        "real, checked files (DDL, orchestrator code, dbt tests, contracts, lineage).",
    )
    parser.add_argument("--version", action="version", version=f"data-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from agent.errors import DataAgentError

    previous = _terminate_as_exception()
    guard = sys.stdout = _GuardedStdout(sys.stdout)
    try:
        return int(args.run(args) or 0)
    except DataAgentError as exc:
        return fail(args, exc)
    except KeyboardInterrupt:
        print("data-agent: interrupted; nothing was half-written", file=sys.stderr)
        return 130
    except Terminated:
        print("data-agent: terminated; nothing was half-written", file=sys.stderr)
        return 143
    except BrokenPipeError:
        return 0
    except OutputLost as exc:
        return _output_lost(exc, 0)
    finally:
        if sys.stdout is guard:  # still the stream it guarded (not the null device after a lost write)
            sys.stdout = guard.stream
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class OutputLost(OSError):
    """Standard output could not be written (a full disk, a device error)."""


class _GuardedStdout:
    """``sys.stdout`` while a command runs: a write error is marked as the output's, so main() reports it
    in one line and a non-zero exit instead of a traceback (a broken pipe stays a broken pipe)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return _guarded(self.stream.write, text)

    def flush(self) -> None:
        _guarded(self.stream.flush)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, buffer, encoding...
        return getattr(self.stream, name)


def _guarded(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputLost(exc.errno, exc.strerror) from None


def _output_lost(exc: OSError, code: int) -> int:
    """Output that could not be written is an error, never a silent success. The null device then stands
    in for stdout until the process exits, so nothing tries the write again."""
    from agent.errors import OutputError

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - open until exit
    print(f"data-agent: error: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
    return code or OutputError.exit_code


def _flush_output(code: int) -> int:
    """Flush what is still buffered (most output is, until here) and say so when it cannot be written."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`| head`): as main() treats it
        pass
    except OSError as exc:
        code = _output_lost(exc, code)
    except ValueError:  # closed by the caller
        pass
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    return code


def console_main() -> None:
    """The ``data-agent`` command (and ``python -m agent``): :func:`main`, then exit without the
    interpreter's teardown.

    Tearing down a process that has loaded sqlglot, DuckDB, the tokenizer and pydantic models costs
    100-150 ms, object by object, and changes nothing outside the process: by then every file is written
    and closed, and the exit handlers (``atexit``) still run here. Where another thread is still running
    the interpreter's own exit is kept, since it waits for that thread.

    numpy asks the kernel for transparent huge pages for each array of 4 MB or more; where the kernel may
    compact memory to find one at the first touch (this machine's ``defrag=madvise``), a short-lived
    command waits for that and gains little from the larger pages in the time it has. So the command
    (and the processes it starts) leaves the pages small unless ``NUMPY_MADVISE_HUGEPAGE`` says
    otherwise: cold ``context`` over 5,000 files 1886 -> 1806 ms, ten alternating runs."""
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")  # read once, when numpy is first imported
    try:
        code = main()
    except SystemExit as exc:  # argparse's own exits (--help, --version, a usage error) flush like the rest
        if exc.code is not None and not isinstance(exc.code, int):
            raise
        code = exc.code or 0
    threading = sys.modules.get("threading")
    if (threading is not None and threading.active_count() > 1) or not hasattr(atexit, "_run_exitfuncs"):
        sys.exit(_flush_output(code))
    atexit._run_exitfuncs()
    os._exit(_flush_output(code))


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so every cleanup (temporary bundle, locks) runs."""


def _terminate_as_exception() -> Any:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a library user's worker)
        return None


def fail(args: argparse.Namespace, exc: Any) -> int:
    if getattr(args, "json", False):
        print(json.dumps(exc.to_dict()))
    print(f"data-agent: error: {exc}", file=sys.stderr)
    return exc.exit_code


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, default=str))


if __name__ == "__main__":
    console_main()
