#!/usr/bin/env bash
# The Ray tests (pytest marker `ray`), inside a fresh network namespace whose only interface is loopback:
# Ray binds the machine's interface address by default; here there is none, so every socket it opens
# is on 127.0.0.1 (the tests check the namespace before they run). Needs root (CI is) and rllmtop[ray].
#
#     bash tests/workers/run_ray_tests.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
if ! "$PY" -c 'import ray' 2>/dev/null; then
    echo "run_ray_tests: ray is not installed in $PY (pip install 'rllmtop[ray]')" >&2
    exit 1
fi
exec unshare -n bash -c 'ip link set lo up && RLLMTOP_RAY_NETNS=1 RAY_USAGE_STATS_ENABLED=0 "$0" -m pytest -m ray tests/workers "$@"' "$PY" "$@"
