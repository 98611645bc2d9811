"""data-agent design REQUEST... --out DIR

Imports here stay light (no dataclasses, pickle or multiprocessing at module level): a single design forks
its memory process as soon as the arguments are parsed, and whatever is imported before that fork delays
the child's Chroma import, the critical path of a cold design."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    from agent.commands import common

    p = sub.add_parser(
        "design",
        help="design a data platform from a request file or free text",
        description="Design a data platform: load steering policies, recall past designs, pack "
        "the context, plan, render and check the deliverables, emit delegations.",
    )
    p.add_argument("requests", nargs="+", metavar="REQUEST", help="a request file (.yaml/.json) or free text")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="bundle directory (default: ./designs/<name>); with several "
        "requests, one sub-directory per request",
    )
    p.add_argument("--budget", type=int, default=4000, help="context token budget (default 4000)")
    p.add_argument("--encoding", default="cl100k_base", choices=["cl100k_base", "o200k_base"])
    p.add_argument(
        "--planner",
        default="rules",
        choices=["rules", "claude", "auto"],
        help="rules (offline, default), claude (anthropic API) or auto (claude when "
        "ANTHROPIC_API_KEY is set and --offline is not given)",
    )
    p.add_argument("--offline", action="store_true", help="never call a network service")
    claude_options(p)
    p.add_argument("--templates", metavar="DIR", help="override templates by relative file name")
    p.add_argument("--no-memory", action="store_true", help="neither recall nor remember")
    p.add_argument("--no-remember", action="store_true", help="recall, but do not store this design")
    p.add_argument("--strict", action="store_true", help="exit non-zero when a policy check fails")
    p.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=1,
        metavar="N",
        help="design up to N requests at once in worker processes (default 1; 0 = one per CPU); "
        "an error in one request is reported for it and the others still complete",
    )
    p.add_argument(
        "--agent-map",
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="delegate a role to another agent name, e.g. qa-engineer=qa-expert",
    )
    common(p)
    p.set_defaults(run=run)


def claude_options(p: argparse.ArgumentParser) -> None:
    """Settings of the Claude planner; each also reads $DATA_AGENT_* and the config file's [claude]."""
    g = p.add_argument_group("Claude planner (flag > $DATA_AGENT_* > ~/.config/data-agent/config.toml)")
    g.add_argument("--model", help="model id (default claude-sonnet-4-6; $DATA_AGENT_MODEL)")
    g.add_argument("--max-tokens", type=int, help="reply token limit ($DATA_AGENT_MAX_TOKENS)")
    g.add_argument("--timeout", type=float, help="seconds per API request ($DATA_AGENT_TIMEOUT)")
    g.add_argument("--retries", type=int, help="retries on 429/5xx/529 with backoff ($DATA_AGENT_RETRIES)")


def claude_settings(args: argparse.Namespace) -> dict[str, Any]:
    names = ("model", "max_tokens", "timeout", "retries")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def parse_agent_map(items: list[str]) -> dict[str, str]:
    if not items:  # no import of the models (pydantic) before a single design forks its memory process
        return {}
    from agent.errors import DataAgentError
    from agent.models import SUBAGENTS

    mapping = {}
    for item in items:
        role, sep, name = item.partition("=")
        if not sep or role not in SUBAGENTS or not name.strip():
            raise DataAgentError(
                f"--agent-map {item!r} must be ROLE=NAME with ROLE one of {', '.join(SUBAGENTS)}",
                field="agent-map",
            )
        mapping[role] = name.strip()
    return mapping


def run(args: argparse.Namespace) -> int:
    from agent.errors import DataAgentError, PlannerError

    if args.offline and args.planner == "claude":
        raise PlannerError(
            "--planner claude calls the Anthropic API, which --offline forbids", hint="use --planner rules"
        )
    jobs = getattr(args, "jobs", 1)
    if jobs is None or jobs < 0:
        raise DataAgentError("--jobs must be 0 (one per CPU) or a positive number", field="jobs")
    agent_map = parse_agent_map(args.agent_map)
    if len(args.requests) == 1:
        # forked before the heavy imports below, so the child's Chroma import starts as early as it can
        store = _memory_process(args)
        try:
            return _run_one(args, _config(args, agent_map), store)
        finally:
            if store is not None:
                store.close()
    return _run_many(args, _config(args, agent_map), jobs)


def _config(args: argparse.Namespace, agent_map: dict[str, str]) -> Any:
    from agent.runtime import AgentConfig

    return AgentConfig(
        context=args.context,
        memory_dir=args.memory_dir,
        memory_url=args.memory_url,
        use_memory=not args.no_memory,
        remember=not args.no_remember,
        budget=args.budget,
        encoding=args.encoding,
        planner="rules" if args.offline else args.planner,
        templates=args.templates,
        agent_map=agent_map,
        offline=args.offline,
        claude=claude_settings(args),
    )


def _run_one(args: argparse.Namespace, config: Any, store: Any) -> int:
    from agent.runtime import DataEngineerAgent

    request = args.requests[0]
    if store is not None:

        def warm(answered: Callable[[], bool]) -> None:  # on this CPU, while the child opens the store
            from agent.validate import warm as warm_validation

            _prewarm(config, chroma=False)
            warm_validation()
            _rehearse(config, request, answered)
            # Everything alive now (modules, compiled templates, policies) lives until exit: keep the
            # cyclic GC from walking it again. A full collection over it cost ~30 ms of the real design.
            gc.freeze()

        store.while_waiting = warm
    result = _one(
        DataEngineerAgent(config, store=store), request, _out_dir(args.out, request, 0, False), args
    )
    if args.json:
        from agent.cli import emit_json

        emit_json(result.to_json())
    return 5 if args.strict and not result.ok else 0


class _Answered(Exception):
    """The memory process answered: the rehearsal stops at the stage it is in."""


def _rehearse(config: Any, request: str, answered: Callable[[], bool]) -> None:
    """Design the request once without memories and throw the result away, while the memory process is
    still opening the store. What the real design does after recall then runs warm: the templates' and
    sqlglot's first use, DuckDB's checks of the same DDL (memoised on its text). Stops at the first stage
    boundary after the answer has arrived, so it never delays the real design by more than one stage.
    Only with the rules planner: nothing here may call a network service or write a file."""
    if config.planner != "rules" or answered():
        return
    import dataclasses

    from agent.errors import DataAgentError
    from agent.runtime import DataEngineerAgent

    def stop_if_answered(stage: str, seconds: float) -> None:
        if answered():
            raise _Answered

    # a request error is the real design's to report, from its own request stage
    with contextlib.suppress(_Answered, DataAgentError):
        DataEngineerAgent(dataclasses.replace(config, use_memory=False)).design(
            request, on_stage=stop_if_answered
        )


def _run_many(args: argparse.Namespace, config: Any, jobs: int) -> int:
    tasks = [
        (i, request, str(_out_dir(args.out, request, i, True))) for i, request in enumerate(args.requests)
    ]
    workers = min(len(tasks), jobs or os.cpu_count() or 1)
    if workers > 1:
        outcomes = _run_parallel(config, tasks, workers, args.json)
    else:
        _init_worker(config, args.json)
        outcomes = [_design_task(task) for task in tasks]
    failed_checks = False
    exit_code = 0
    for outcome in outcomes:
        if outcome.get("summary_text"):
            sys.stdout.write(outcome.pop("summary_text"))
        if "error" in outcome:
            print(f"data-agent: error: {outcome['request']}: {outcome['error_text']}", file=sys.stderr)
            exit_code = exit_code or int(outcome["exit_code"])
        elif not outcome["ok"]:
            failed_checks = True
    if args.json:
        # each design's part was serialised when it was finished: written one by one, this is what
        # json.dumps of the whole would print, without a second copy of it all
        sys.stdout.write('{"designs": [')
        for n, outcome in enumerate(outcomes):
            part = outcome.pop("json", None) or json.dumps(_public(outcome), default=str)
            sys.stdout.write(f", {part}" if n else part)
        sys.stdout.write("]}\n")
    if exit_code:
        return exit_code
    return 5 if args.strict and failed_checks else 0


# -- several requests: one agent per worker process --------------------------------------------------
#
# A batch keeps each finished design compact, so that its memory does not grow with the number of
# requests (a design's live objects take ~0.85 MB; 300 designs peaked at 468 MB): a result waiting to be
# remembered is kept pickled (~140 KB), and a finished one only as its JSON text or terminal summary.

_WORKER: dict[str, Any] = {}
# designs remembered per store session at the end of a parallel batch: bounds the live results at once
REMEMBER_CHUNK = 20


def _init_worker(config: Any, as_json: bool, defer_remember: bool = False) -> None:
    from agent.runtime import DataEngineerAgent

    _WORKER["agent"] = DataEngineerAgent(config)
    _WORKER["json"] = as_json
    _WORKER["defer_remember"] = defer_remember


def _design_task(task: tuple[int, str, str]) -> dict[str, Any]:
    """One request of a batch: the design's outcome, or the error it raised; never an exception."""
    import dataclasses
    import pickle

    from agent.errors import DataAgentError

    index, request, out = task
    agent = _WORKER["agent"]
    defer = _WORKER.get("defer_remember", False)
    try:
        result = agent.design(request, out=Path(out), remember=not defer)
    except DataAgentError as exc:
        return {
            "index": index,
            "request": request,
            "error": exc.to_dict(),
            "error_text": str(exc),
            "exit_code": exc.exit_code,
        }
    except Exception as exc:  # noqa: BLE001 - one broken request must not stop the batch
        return {
            "index": index,
            "request": request,
            "error": {"error": type(exc).__name__, "message": str(exc)[:500]},
            "error_text": f"{type(exc).__name__}: {exc}",
            "exit_code": 1,
        }
    outcome: dict[str, Any] = {"index": index, "request": request, "ok": result.ok}
    if defer:
        # the parent remembers the whole batch, then finishes the output from this: what the memory, the
        # manifest and the summary need, not the files or the context pack
        lean = dataclasses.replace(result, files={}, pack=None)
        outcome["result"] = pickle.dumps(lean, pickle.HIGHEST_PROTOCOL)
    else:
        _finish(outcome, result, _WORKER["json"])
    return outcome


def _finish(outcome: dict[str, Any], result: Any, as_json: bool) -> None:
    """Reduce a finished design to what the batch prints for it."""
    if as_json:
        outcome["json"] = json.dumps(
            _public({"request": outcome["request"], **result.to_json()}), default=str
        )
    else:
        outcome["summary_text"] = _summary_text(result)


def _public(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outcome.items() if k not in ("index", "error_text", "exit_code", "ok", "result")}


def _remember_batch(config: Any, outcomes: list[dict[str, Any]], as_json: bool) -> None:
    """Remember every design of a parallel batch in request order, REMEMBER_CHUNK designs per store session,
    then finish the outputs the workers left open (they carry the remembered id). The whole batch is
    designed before the first design is remembered: no design of a batch recalls another, so the results
    do not depend on scheduling."""
    import pickle

    from agent.runtime import DataEngineerAgent

    done = [o for o in outcomes if "result" in o]
    agent = DataEngineerAgent(config) if config.use_memory and config.remember else None
    for start in range(0, len(done), REMEMBER_CHUNK):
        chunk = done[start : start + REMEMBER_CHUNK]
        results = [pickle.loads(o.pop("result")) for o in chunk]
        if agent is not None:
            agent.remember(results)
        for outcome, result in zip(chunk, results):
            _finish(outcome, result, as_json)


def _summary_text(result: Any) -> str:
    """The terminal summary of one design, captured, so a batch prints them in request order."""
    import io

    from agent.console import print_design_summary

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_design_summary(result)
    return buf.getvalue()


def _run_parallel(config: Any, tasks: list[tuple[int, str, str]], workers: int, as_json: bool) -> list[dict]:
    """A process pool (threads would share one GIL). On Linux the workers are forked from this process
    after the heavy modules are imported and the tokenizer and templates are warm, so each worker starts
    in milliseconds; the memory store serialises its writes with a file lock, so workers share it safely."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods:
        _prewarm(config)
        context = multiprocessing.get_context("fork")
    else:
        context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(config, as_json, True)
    ) as pool:
        try:
            outcomes = sorted(pool.map(_design_task, tasks, chunksize=1), key=lambda o: o["index"])
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    _remember_batch(config, outcomes, as_json)
    return outcomes


def _memory_process(args: argparse.Namespace) -> Any:
    """The memory store in a forked child, so that a cold single design imports Chroma and opens the
    store on one CPU while this process warms everything else on the other (agent/memory_process.py).
    None where that is not safe or not useful: no memory, more than one thread, Chroma already imported,
    not Linux, or DATA_AGENT_MEMORY_PROCESS=0."""
    if args.no_memory or os.environ.get("DATA_AGENT_MEMORY_PROCESS", "1") == "0":
        return None
    from agent.memory_process import MemoryProcess, can_fork

    if not can_fork():
        return None
    return MemoryProcess(args.memory_dir, args.memory_url)


def _prewarm(config: Any, *, chroma: bool = True) -> None:
    """Import and build what every design needs, once, before forking. Nothing here opens the memory
    store or starts a thread (a forked child must not inherit a half-held lock or a client)."""
    import duckdb  # noqa: F401
    import sqlglot  # noqa: F401
    import yaml  # noqa: F401

    import agent.checks  # noqa: F401
    import agent.compress  # noqa: F401
    import agent.delegation  # noqa: F401
    import agent.planner  # noqa: F401
    import agent.request  # noqa: F401
    import agent.steering  # noqa: F401
    import agent.validate  # noqa: F401
    from agent.render import warm_templates
    from agent.tokens import encoding

    encoding(config.encoding)
    warm_templates(str(config.templates) if config.templates else None)
    if config.use_memory and chroma:
        import chromadb  # noqa: F401
        import chromadb.api.rust  # noqa: F401

        import agent.memory  # noqa: F401


def _out_dir(out: str | None, request: str, index: int, several: bool) -> Path:
    from agent.models import slugify

    base = Path(out) if out else Path("designs")
    if out and not several:
        return base
    stem = Path(request).stem if request.endswith((".yaml", ".yml", ".json")) else slugify(request)[:40]
    return base / (f"{index + 1:02d}-{stem}" if several else stem)


def _one(agent: Any, request: str, out: Path, args: argparse.Namespace) -> Any:
    from agent.console import DesignProgress

    with DesignProgress(enabled=not args.json and sys.stdout.isatty(), label=request) as progress:
        result = agent.design(request, out=out, on_stage=progress.stage_done)
    if not args.json:
        from agent.console import print_design_summary

        print_design_summary(result)
    return result
