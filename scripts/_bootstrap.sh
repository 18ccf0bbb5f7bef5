# Sourced by scripts/demo.sh and scripts/test.sh: installs what a fresh machine lacks.
# Usage: bootstrap_python EXTRAS   (sets $PY to the project's virtualenv python)
set -euo pipefail

_as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

_apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: cannot install $* (no apt-get); install them with your package manager" >&2
    return 1
  fi
  if [ "$_apt_updated" = 0 ]; then _as_root apt-get update -qq; _apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive _as_root apt-get install -y -qq "$@" >/dev/null
}

bootstrap_python() {
  local extras="$1"
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local venv="$root/.venv"
  if ! command -v python3 >/dev/null 2>&1; then apt_install python3; fi
  if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
      rm -rf "$venv"
      apt_install python3-venv
      python3 -m venv "$venv"
    fi
  fi
  PY="$venv/bin/python"
  # Reinstall only when pyproject.toml changed since the last install of these
  # extras (an editable install sees source changes anyway): saves ~4 s a run.
  local stamp="$venv/.installed-${extras:-base}"
  local want
  want="$(cat "$root/pyproject.toml" | cksum)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  # PYTHONWARNINGS reaches the build backend too: setuptools warns about every
  # editable install, which says nothing to someone running the demo.
  PYTHONWARNINGS=ignore "$PY" -m pip install -q --disable-pip-version-check --upgrade pip
  PYTHONWARNINGS=ignore "$PY" -m pip install -q --disable-pip-version-check -e "$root[$extras]"
  echo "$want" > "$stamp"
}
