#!/usr/bin/env bash
# SubagentStart (data-agent:data-engineer): a short steering summary, well under the 10,000-character cap.
# Reads a static file; no Python, never fails the subagent.
ROOT="${CLAUDE_PLUGIN_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
SUMMARY="$ROOT/hooks/steering-summary.md"
[ -f "$SUMMARY" ] || exit 0
text="$(head -c 8000 "$SUMMARY" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/ /g' | awk '{printf "%s\\n", $0}')"
printf '{"hookSpecificOutput":{"hookEventName":"SubagentStart","additionalContext":"%s"}}\n' "$text"
exit 0
