#!/usr/bin/env bash
# Run the README's test command RUNS times (default 5) with two CPU-bound processes beside it,
# the way a shared or busy CI machine runs it, and report how many runs were green.
#
#   scripts/busy-machine-tests.sh [RUNS]
#
# The suite is built once first, so the runs measure the tests, not the compiler. Each run's
# output is kept in a temporary directory, named at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"
LOGS="$(mktemp -d)"

echo "== building the test suite"
cargo test --workspace --no-run --locked >"$LOGS/build.log" 2>&1 || {
    cat "$LOGS/build.log"
    exit 1
}

# Two busy loops, one per core of a 2-core machine: the tests get what the scheduler leaves.
hogs=()
for _ in 1 2; do
    (while :; do :; done) &
    hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT

green=0
for i in $(seq 1 "$RUNS"); do
    start=$SECONDS
    if cargo test --workspace --locked >"$LOGS/run-$i.log" 2>&1; then
        green=$((green + 1))
        echo "run $i: green ($((SECONDS - start)) s)"
    else
        echo "run $i: RED ($((SECONDS - start)) s), failures:"
        grep -E "^(test .* FAILED|---- .* stdout ----)|panicked at" "$LOGS/run-$i.log" | head -20
    fi
done
echo "$green of $RUNS runs green with two CPU-bound processes beside them (logs: $LOGS)"
[ "$green" -eq "$RUNS" ]
