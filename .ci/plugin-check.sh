#!/usr/bin/env bash
# Check the repository as a Claude Code plugin with the real Claude Code CLI.
#
#   .ci/plugin-check.sh [REPO]
#
# Installs @anthropic-ai/claude-code from the npm registry into a cache outside the repository (the
# binary ships in the package; the plugin commands below need no network), then, with HOME set to a
# temporary directory: claude plugin validate, marketplace add, install, details and list, asserting
# the four agents, the /data-agent:design command, the hooks and the MCP server.
#
# Exit 0: passed. Exit 1: a check failed. Exit 77: Claude Code could not be installed or found (skip).
# Environment: CLAUDE_BIN (use this binary), CLAUDE_CODE_VERSION (npm version, default 2.1.197),
# DATA_AGENT_CI_CACHE (npm cache dir, default ~/.cache/data-agent-ci).
set -euo pipefail

REPO="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)"
CACHE="${DATA_AGENT_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/data-agent-ci}"
VERSION="${CLAUDE_CODE_VERSION:-2.1.197}"
AGENTS=(data-engineer security-engineer devops-engineer qa-engineer)

claude_bin() {
  if [ -n "${CLAUDE_BIN:-}" ] && [ -x "$CLAUDE_BIN" ]; then echo "$CLAUDE_BIN"; return 0; fi
  local npm_bin="$CACHE/npm/node_modules/.bin/claude"
  if [ ! -x "$npm_bin" ] && command -v npm >/dev/null 2>&1; then
    mkdir -p "$CACHE/npm"
    npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" "@anthropic-ai/claude-code@$VERSION" >&2 || true
  fi
  if [ -x "$npm_bin" ] && "$npm_bin" --version >/dev/null 2>&1; then echo "$npm_bin"; return 0; fi
  if command -v claude >/dev/null 2>&1; then command -v claude; return 0; fi
  return 1
}

if ! CLAUDE="$(claude_bin)"; then
  echo "SKIP: Claude Code CLI not available (npm install @anthropic-ai/claude-code failed or npm missing)"
  exit 77
fi

FAKE_HOME="$(mktemp -d)"
trap 'rm -rf "$FAKE_HOME"' EXIT
export HOME="$FAKE_HOME"
unset CLAUDE_CONFIG_DIR
cd "$FAKE_HOME"

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }

echo "claude: $("$CLAUDE" --version) ($CLAUDE)"

for target in "$REPO" "$REPO/.claude-plugin/plugin.json"; do
  if out="$("$CLAUDE" plugin validate "$target" 2>&1)"; then
    if grep -qiE "warning|⚠" <<<"$out"; then fail "validate $target warns:"; echo "$out"; else ok "validate ${target#"$REPO"/}"; fi
  else
    fail "validate $target"; echo "$out"
  fi
done

MARKET="$(sed -n 's/^  "name"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$REPO/.claude-plugin/marketplace.json" | head -n 1)"
"$CLAUDE" plugin marketplace add "$REPO" >/dev/null 2>&1 && ok "marketplace add ($MARKET)" || fail "marketplace add $REPO"
"$CLAUDE" plugin install "data-agent@$MARKET" >/dev/null 2>&1 && ok "install data-agent@$MARKET" || fail "install data-agent@$MARKET"

details="$("$CLAUDE" plugin details data-agent 2>&1 || true)"
listing="$("$CLAUDE" plugin list 2>&1 || true)"
echo "$details" | sed -n '/Component inventory/,/LSP servers/p'

grep -q "Status: ✔ enabled" <<<"$listing" && ok "plugin loads (enabled, no load error)" || { fail "plugin list:"; echo "$listing"; }
grep -qE "Skills \([0-9]+\).*\bdesign\b" <<<"$details" && ok "command /data-agent:design" || fail "command design not listed"
grep -qE "Hooks \([0-9]+\).*SessionStart" <<<"$details" && ok "hooks: SessionStart" || fail "SessionStart hook not listed"
grep -qE "MCP servers \([0-9]+\).*data-agent" <<<"$details" && ok "MCP server data-agent" || fail "MCP server not listed"

agents_line="$(grep -E "^ *Agents \(" <<<"$details" || true)"
for a in "${AGENTS[@]}"; do
  grep -qw "$a" <<<"$agents_line" && ok "agent $a" || fail "agent $a not listed"
done

if [ "$failures" -gt 0 ]; then
  echo "plugin-check: $failures check(s) failed"
  exit 1
fi
echo "plugin-check: all checks passed"
