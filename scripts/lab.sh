#!/usr/bin/env bash
# flock's main job without a cluster: the local lab (as root on Debian). Installs what is
# missing (scripts/install.sh), then `flock lab run` with your arguments, e.g. --compare.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh >&2
exec .venv/bin/flock lab run "$@"
