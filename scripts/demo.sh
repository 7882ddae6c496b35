#!/usr/bin/env bash
# Run the demo on the embedded store: no API keys, no network, no server to install.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_setup.sh
python_env
exec .venv/bin/python -m nasca_core.demo "$@"
