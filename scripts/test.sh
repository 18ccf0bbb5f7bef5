#!/usr/bin/env bash
# The whole test suite: installs what it needs (OpenSSH for the REMOTE tests,
# a virtualenv with the dev extra), then runs lint, type checks (mypy, pyright), tests and a
# smoke run of every benchmark. Any failure (pytest's "no tests" too) fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/_bootstrap.sh"
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null 2>&1 || ! command -v iptables >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  apt_install openssh-server openssh-client iptables iproute2
fi
bootstrap_python "dev,dask,ray"  # DASK/RAY tests run real clusters
cd "$here/.."
"$PY" -m ruff check .
"$PY" -m mypy
"$PY" -m pyright  # the second type checker the house asks for (its settings: pyproject.toml)
"$PY" -m pytest tests benchmarks --benchmark-disable "$@"
