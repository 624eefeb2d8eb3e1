#!/usr/bin/env bash
# The linters CI runs (.ci/run): ruff (the rule set in pyproject.toml), mypy (0 errors on condastack/),
# and import-linter (rooms follow the data flow; conda-lock only through its adapter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check condastack
.venv/bin/mypy
.venv/bin/lint-imports
