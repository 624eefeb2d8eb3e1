#!/usr/bin/env bash
# README command 1: install what is needed, then run the whole pipeline on the
# bundled offline example (examples/demo) against a channel built locally.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
