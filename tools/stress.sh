#!/bin/sh
# stress.sh BUILD_DIR [RUNS]: runs the end-to-end tests (`ctest -L e2e`, every script under
# tests/e2e/) RUNS times in a row (5 by default) while two CPU hogs and a disk writer (dd with
# fsync, in a loop) run beside them, as on a loaded two-core machine.  A check that depends on
# the machine's speed fails here.  Prints each run's result and time, then
# `stress: N of RUNS runs passed`; exits 1 unless every run passed.  The hogs and the writer are
# stopped and the writer's file removed however it ends.
set -u
BUILD=${1:-build}
RUNS=${2:-5}
DD="$BUILD/stress.dd"
LOAD=""

stop_load() {
    for p in $LOAD; do kill "$p" 2>/dev/null; done
    for p in $LOAD; do wait "$p" 2>/dev/null; done
    LOAD=""
    rm -f "$DD"
}
trap stop_load EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for i in 1 2; do
    sh -c 'while :; do :; done' &
    LOAD="$LOAD $!"
done
# The writer stops its dd when it is stopped itself.
sh -c 'trap "kill \$c 2>/dev/null; exit 0" TERM
       while :; do dd if=/dev/zero of="$1" bs=1M count=256 conv=fsync 2>/dev/null & c=$!; wait $c; done' \
    writer "$DD" &
LOAD="$LOAD $!"

passed=0
i=1
while [ "$i" -le "$RUNS" ]; do
    t0=$(date +%s)
    if (cd "$BUILD" && ctest -L e2e --output-on-failure); then
        passed=$((passed + 1)); result=passed
    else
        result=FAILED
    fi
    echo "stress: run $i of $RUNS $result in $(( $(date +%s) - t0 )) s"
    i=$((i + 1))
done
stop_load
echo "stress: $passed of $RUNS runs passed"
[ "$passed" -eq "$RUNS" ]
