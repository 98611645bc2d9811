#!/usr/bin/env bash
# SessionStart: make the data-agent Python runtime available.
#
# A virtual environment under ${CLAUDE_PLUGIN_DATA}/venv, created or updated only when the plugin version
# changes (pip install "${CLAUDE_PLUGIN_ROOT}"); otherwise a no-op that starts no Python at all.
# It never blocks the session: every path exits 0, and a failure is reported as a message that says
# what to do.
set -u

ROOT="${CLAUDE_PLUGIN_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
DATA="${CLAUDE_PLUGIN_DATA:-${XDG_DATA_HOME:-$HOME/.local/share}/data-agent}"
VENV="$DATA/venv"
STAMP="$VENV/.data-agent-version"
LOG="$DATA/install.log"
MIN_MINOR=10 # Python 3.10+

# The version from plugin.json, read without starting Python.
VERSION="$(sed -n 's/^[[:space:]]*"version"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$ROOT/.claude-plugin/plugin.json" 2>/dev/null | head -n 1)"
VERSION="${VERSION:-unknown}"

# Fast path: the venv is there and built from this version.
if [ -x "$VENV/bin/data-agent" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi

say() {
  # One message for the user (systemMessage) and for Claude (additionalContext). Never fails.
  local msg="$1" esc
  esc="$(printf '%s' "$msg" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr '\n' ' ')"
  printf '{"systemMessage":"%s","hookSpecificOutput":{"hookEventName":"SessionStart","additionalContext":"%s"}}\n' "$esc" "$esc"
}

PY=""
for candidate in ${DATA_AGENT_PYTHON:-} python3 python3.13 python3.12 python3.11 python3.10 python; do
  if command -v "$candidate" >/dev/null 2>&1 &&
    "$candidate" -c "import sys; sys.exit(0 if sys.version_info >= (3, $MIN_MINOR) else 1)" >/dev/null 2>&1; then
    PY="$(command -v "$candidate")"
    break
  fi
done
if [ -z "$PY" ]; then
  found="$(command -v python3 2>/dev/null || true)"
  if [ -n "$found" ]; then
    have="$("$found" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo '?')"
    say "data-agent: python3 at $found is version $have; data-agent needs Python 3.$MIN_MINOR or newer. Install a newer Python (or set DATA_AGENT_PYTHON to one) and start a new session. The data-agent tools are unavailable until then."
  else
    say "data-agent: python3 was not found on PATH; data-agent needs Python 3.$MIN_MINOR or newer. Install it (or set DATA_AGENT_PYTHON) and start a new session. The data-agent tools are unavailable until then."
  fi
  exit 0
fi

if ! mkdir -p "$DATA" 2>/dev/null; then
  say "data-agent: cannot create the plugin data directory $DATA; check its permissions and start a new session."
  exit 0
fi

# One installer at a time: a second session waits briefly, then leaves it to the first.
LOCK="$DATA/.install.lock"
tries=0
until mkdir "$LOCK" 2>/dev/null; do
  tries=$((tries + 1))
  if [ "$tries" -ge 600 ]; then
    say "data-agent: another session is still installing the runtime (lock $LOCK). If no install is running, remove that directory and start a new session."
    exit 0
  fi
  sleep 1
  if [ -x "$VENV/bin/data-agent" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
  fi
done
trap 'rmdir "$LOCK" 2>/dev/null' EXIT

{
  echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) data-agent $VERSION with $PY"
} >>"$LOG" 2>/dev/null

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" >>"$LOG" 2>&1; then
    rm -rf "$VENV" 2>/dev/null
    say "data-agent: could not create a virtual environment with $PY at $VENV (see $LOG). On Debian/Ubuntu install the python3-venv package, then start a new session."
    exit 0
  fi
fi

if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade "$ROOT" >>"$LOG" 2>&1; then
  say "data-agent: installing the Python runtime into $VENV failed (see $LOG; the first install needs network access to PyPI). Fix the cause and start a new session; data-agent tools are unavailable until then."
  exit 0
fi

printf '%s' "$VERSION" >"$STAMP"
say "data-agent $VERSION: Python runtime installed in $VENV. Ask for a design with /data-agent:design REQUEST."
exit 0
