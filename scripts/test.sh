#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs redis-server and Chromium (Debian),
# a virtualenv with every extra, then lint, type-check and test. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_setup.sh
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
apt_install "${need[@]}"
python_env
echo "== ruff" && .venv/bin/ruff check .
echo "== mypy" && .venv/bin/mypy
echo "== pytest" && .venv/bin/pytest "$@"
