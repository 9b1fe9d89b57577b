#!/usr/bin/env bash
# The main job (README): creates the environment when missing, then runs the quick N-body benchmark
# (every method, one seed; <= 10 minutes on 2 CPU cores) and prints its table.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
geocanon bench nbody --quick --no-progress "$@"
