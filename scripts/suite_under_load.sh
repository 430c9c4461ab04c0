#!/usr/bin/env bash
# The suite N times in a row under load: two busy loops share the CPUs with it (issue 14's
# flake check). Stops at the first failing run; one line per run in the summary.
#
#   scripts/suite_under_load.sh [N=20] [pytest args...]     e.g. scripts/suite_under_load.sh 5 tests/service
#
# Runs `python3 -m pytest -q -p no:cacheprovider -m "not slow"` (the slow fresh-install test
# builds a venv and is about packaging, not timing) plus any extra arguments; logs go to
# ${LOAD_LOG_DIR:-/tmp/convnd-under-load}/run_<i>.log and summary.txt.
set -u
cd "$(dirname "$0")/.."
N=${1:-20}
shift || true
LOG_DIR=${LOAD_LOG_DIR:-/tmp/convnd-under-load}
mkdir -p "$LOG_DIR"
busy() { while :; do :; done; }
busy & B1=$!
busy & B2=$!
trap 'kill $B1 $B2 2>/dev/null' EXIT
for i in $(seq 1 "$N"); do
  start=$(date +%s)
  python3 -m pytest -q -p no:cacheprovider -m "not slow" "$@" > "$LOG_DIR/run_$i.log" 2>&1
  rc=$?
  line="run $i/$N rc=$rc $(( $(date +%s) - start )) s, commit $(git rev-parse --short HEAD): $(tail -1 "$LOG_DIR/run_$i.log")"
  echo "$line" | tee -a "$LOG_DIR/summary.txt"
  [ "$rc" -ne 0 ] && exit "$rc"
done
