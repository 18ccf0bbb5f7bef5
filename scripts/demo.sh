#!/usr/bin/env bash
# The demo: installs what it needs (a virtualenv in .venv), then shows
# THREAD, PROCESS and REMOTE speeding up real work.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/_bootstrap.sh"
bootstrap_python "dev"
cd "$here/.."
exec "$PY" -m parallelize "$@"
