#!/bin/bash
# Run pytest with the wall clock of every process it starts moved to a given UTC instant.
#
#   bash tests/faketime/run.sh '2028-02-29 12:00:00' [pytest arguments...]
#
# The clock starts at that instant and runs on (libfaketime's relative "+Ns" offset, the same
# in pytest and in every child: gunicorn, the CLI, Chromium). The monotonic clock stays real.
# PostgreSQL and Redis keep the real time. Needs Debian's faketime package.
set -euo pipefail
target="$1"
shift
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
offset=$(( $(date -u -d "$target UTC" +%s) - $(date -u +%s) ))
[ "$offset" -lt 0 ] && sign="" || sign="+"
export DONT_FAKE_MONOTONIC=1
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
echo "faketime offset ${sign}${offset}s: the run starts at $(date -u -d "@$(( $(date -u +%s) + offset ))" '+%F %T') UTC"
exec faketime -f "${sign}${offset}s" "${PYTEST:-$root/.venv/bin/pytest}" "$@"
