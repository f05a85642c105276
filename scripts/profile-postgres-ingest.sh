#!/bin/bash
# Where the CPU of one ingested event goes, case (c) of the ingest benchmark (one
# `audithook serve` on Postgres) against case (b) (the do-nothing endpoint): runs
# `cargo bench --bench ingest`, and during each of the two cases reads every process's CPU
# time from /proc over a 6 s window in the middle of the case, then divides by the case's
# requests in that time. With PERF=1 it also records the Postgres backends with perf during
# case (c) and prints their hottest symbols.
# Needs a Postgres server where the user may create databases:
#   eval "$(.ci/postgres)" && scripts/profile-postgres-ingest.sh
set -eu
cd "$(dirname "$0")/.."
: "${AUDITHOOK_TEST_POSTGRES_URL:?set it (eval \"\$(.ci/postgres)\")}"
window=6
out=/tmp/audithook-ingest-profile.txt
BENCH_SECONDS=${BENCH_SECONDS:-12} cargo bench --bench ingest > "$out" 2>&1 &
bench=$!

ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(ticks "$p"))); done; echo "$t"; }
idle() { awk '/^cpu /{print $5 + $6}' /proc/stat; }
# The first process whose environment has $1 (and whose command line matches $2).
find_proc() {
  local pid
  for _ in $(seq 1 6000); do
    for pid in $(pgrep -f "$2" || true); do
      if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -q "$1"; then
        echo "$pid"
        return
      fi
    done
    sleep 0.1
  done
  echo "no process with $1 appeared" >&2
  exit 1
}
# Samples CPU ticks over the window: server, Postgres (all its processes), load generator
# (the benchmark process), idle.
sample() {
  local server=$1 loadgen pg s0 p0 l0 i0 s1 p1 l1 i1
  loadgen=$(pgrep -f "deps/ingest-" | head -1)
  pg=$(pgrep -x postgres || true)
  s0=$(ticks "$server"); p0=$(sum_ticks $pg); l0=$(ticks "$loadgen"); i0=$(idle)
  if [ "${PERF:-}" = 1 ] && [ -n "$pg" ]; then
    perf record -F 999 -o /tmp/audithook-pg-ingest.perf -p "$(echo $pg | tr ' ' ',')" -- sleep "$window" > /dev/null 2>&1
  else
    sleep "$window"
  fi
  s1=$(ticks "$server"); p1=$(sum_ticks $pg); l1=$(ticks "$loadgen"); i1=$(idle)
  echo "$((s1 - s0)) $((p1 - p0)) $((l1 - l0)) $((i1 - i0))"
}

serve=$(find_proc AUDITHOOK_DATABASE_URL=postgres "audithook serve")
sleep 3
read -r cs cp cl ci < <(sample "$serve")
null=$(find_proc AUDITHOOK_BENCH_NULL_SERVER "deps/ingest-")
sleep 3
read -r bs bp bl bi < <(PERF= sample "$null")
wait "$bench"
grep -E '^\((a|b|c|d)\)' "$out"
rps() { grep -E "^\($1\)" "$out" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/ && $i > 100) { print $i; exit }}'; }
rc=$(rps c); rb=$(rps b)
hz=$(getconf CLK_TCK)
us() { awk -v t="$1" -v r="$2" -v w="$window" -v hz="$hz" 'BEGIN { printf "%.1f", t / hz * 1e6 / (r * w) }'; }
echo
echo "CPU per request over a ${window} s window (µs; idle is the machine's idle time per request):"
echo "| case | req/s | server | Postgres | load generator | idle | all |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
echo "| (c) audithook, Postgres | $rc | $(us "$cs" "$rc") | $(us "$cp" "$rc") | $(us "$cl" "$rc") | $(us "$ci" "$rc") | $(us $((cs + cp + cl + ci)) "$rc") |"
echo "| (b) do-nothing | $rb | $(us "$bs" "$rb") | - | $(us "$bl" "$rb") | $(us "$bi" "$rb") | $(us $((bs + bl + bi)) "$rb") |"
if [ "${PERF:-}" = 1 ]; then
  echo
  echo "Postgres backends' hottest symbols during (c):"
  perf report -i /tmp/audithook-pg-ingest.perf --no-children --sort symbol --stdio 2>/dev/null | grep '%' | cut -c1-80 | head -15
fi
