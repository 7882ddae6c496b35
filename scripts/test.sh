#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs redis-server and Chromium (Debian),
# a virtualenv with every extra, then lint, type-check and test. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_setup.sh
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
apt_install "${need[@]}"
python_env
echo "== ruff" && .venv/bin/ruff check .
echo "== mypy" && .venv/bin/mypy
# Plugins are loaded by name, not auto-loaded: auto-loading marks whole packages (langsmith,
# hypothesis, anyio) for assertion rewriting, and CPython 3.11 before 3.11.9 can fail with
# "AST constructor recursion depth mismatch" when two threads parse at once (gh-106905).
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
echo "== pytest" && .venv/bin/pytest -p pytest_asyncio.plugin -p pytest_timeout -p _hypothesis_pytestplugin "$@"
