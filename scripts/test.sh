#!/usr/bin/env bash
# The test command (README and CI), as root on Debian: installs what is missing
# (scripts/install.sh), runs the static checks, then the whole suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests handlers bench
.venv/bin/mypy
.venv/bin/lint-imports
exec .venv/bin/pytest "$@"
