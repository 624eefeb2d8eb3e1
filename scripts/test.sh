#!/usr/bin/env bash
# README command 2: install everything, then run the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f .cache/envmodules/modulecmd.tcl ] && [ -z "${CONDASTACK_TEST_MODULECMD:-}" ]; then
  export CONDASTACK_TEST_MODULECMD="$PWD/.cache/envmodules/modulecmd.tcl"
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
