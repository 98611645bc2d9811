"""data-agent calibrate: measure Claude's tokenizer against tiktoken and store the safety factor."""

from __future__ import annotations

import argparse
from typing import Any

SAMPLE_REQUEST = "CDC from Postgres orders and customers into Snowflake, hourly; emails are PII; GDPR"


def add_parser(sub: Any) -> None:
    from agent.commands import common

    p = sub.add_parser(
        "calibrate",
        help="measure Claude's token count against tiktoken's and store the packing safety factor",
        description="Pack the steering context for a request, count it with the Anthropic API "
        "(messages.count_tokens, needs ANTHROPIC_API_KEY) and with tiktoken, and store the ratio in the "
        "user data dir as the safety factor used when packing for the Claude planner.",
    )
    p.add_argument(
        "request",
        nargs="?",
        default=SAMPLE_REQUEST,
        metavar="REQUEST",
        help="request file or free text whose packed context is measured (default: a sample request)",
    )
    p.add_argument("--budget", type=int, default=4000, help="context token budget (default 4000)")
    p.add_argument("--encoding", default="cl100k_base", choices=["cl100k_base", "o200k_base"])
    p.add_argument("--model", help="model to calibrate (default: the configured Claude model)")
    p.add_argument("--timeout", type=float, help="seconds per API request")
    p.add_argument("--retries", type=int, help="retries on 429/5xx/529")
    p.add_argument("--dry-run", action="store_true", help="measure and print, do not store")
    common(p, memory=False)
    p.set_defaults(run=run)


def measure(
    text: str, *, encoding: str = "cl100k_base", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Claude's tokens for ``text`` (count with it minus count without it) over tiktoken's."""
    from agent import tokens
    from agent.claude_client import call, make_client
    from agent.config import resolve
    from agent.errors import PlannerError

    settings = resolve(overrides)
    client = make_client(settings)
    probe = [{"role": "user", "content": "Design."}]

    def count(system: list[dict[str, Any]] | None) -> int:
        kwargs: dict[str, Any] = {"model": settings.model, "messages": probe}
        if system:
            kwargs["system"] = system
        result = call(settings, "counting tokens", lambda: client.messages.count_tokens(**kwargs))
        return int(result.input_tokens)

    with_text = count([{"type": "text", "text": text}])
    baseline = count(None)
    claude_tokens = with_text - baseline
    tiktoken_tokens = tokens.count(text, encoding)
    if claude_tokens <= 0 or tiktoken_tokens <= 0:
        raise PlannerError(
            f"count_tokens gave {with_text} with the context and {baseline} without; cannot calibrate"
        )
    return {
        "model": settings.model,
        "factor": round(claude_tokens / tiktoken_tokens, 4),
        "claude_tokens": claude_tokens,
        "tiktoken_tokens": tiktoken_tokens,
        "encoding": encoding,
    }


def run(args: argparse.Namespace) -> int:
    from agent.compress import pack
    from agent.config import save_calibration
    from agent.errors import DataAgentError
    from agent.models import now_iso
    from agent.runtime import to_request
    from agent.steering import load_policies

    if args.budget < 50:
        raise DataAgentError("--budget must be at least 50 tokens", field="budget")
    request = to_request(args.request)
    context = pack(load_policies(args.context), request, budget=args.budget, encoding=args.encoding)
    overrides = {"model": args.model, "timeout": args.timeout, "retries": args.retries}
    result = measure(context.text, encoding=args.encoding, overrides=overrides)
    result["measured_at"] = now_iso()
    result["budget"] = args.budget
    path = None if args.dry_run else save_calibration(result["model"], result)
    result["stored"] = str(path) if path else None
    if args.json:
        from agent.cli import emit_json

        emit_json(result)
        return 0
    print(
        f"{result['model']}: {result['claude_tokens']} Claude tokens / {result['tiktoken_tokens']} "
        f"{args.encoding} tokens = safety factor {result['factor']:.3f}"
    )
    print(f"stored in {path}" if path else "not stored (--dry-run)")
    return 0
