#!/bin/bash
# Profiles case (c) of the ingest benchmark (one `audithook serve` on Postgres): runs
# `cargo bench --bench ingest`, waits for the serve process on Postgres, records every CPU
# for 6 s with perf, then prints the split by thread and Postgres's hottest symbols.
# Needs perf and a Postgres server where the user may create databases:
#   eval "$(.ci/postgres)" && scripts/profile-postgres-ingest.sh
set -eu
cd "$(dirname "$0")/.."
: "${AUDITHOOK_TEST_POSTGRES_URL:?set it (eval \"\$(.ci/postgres)\")}"
out=${PROFILE_OUT:-/tmp/audithook-pg-ingest.perf}
BENCH_SECONDS=${BENCH_SECONDS:-12} cargo bench --bench ingest > /tmp/audithook-ingest-bench.txt 2>&1 &
bench=$!
serve=""
for _ in $(seq 1 3000); do
  for pid in $(pgrep -f "audithook serve" || true); do
    if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -q "AUDITHOOK_DATABASE_URL=postgres"; then
      serve=$pid
    fi
  done
  [ -n "$serve" ] && break
  sleep 0.2
done
[ -n "$serve" ] || { echo "no audithook serve on Postgres appeared" >&2; exit 1; }
sleep 3
perf record -a -g -o "$out" -- sleep 6 > /dev/null 2>&1
wait "$bench"
grep -E '^\((a|b|c|d)\)' /tmp/audithook-ingest-bench.txt
echo "--- CPU by thread (audithook serve is pid $serve)"
perf report -i "$out" --no-children --sort pid -g none 2>/dev/null | grep '%' | head -12
echo "--- Postgres backends' hottest symbols"
perf report -i "$out" --no-children --comm postgres --sort symbol -g none 2>/dev/null | grep '%' | head -10
