#!/bin/bash
# Run every test: C unit tests and bats files, all producing TAP.
# Prints each suite's TAP, then one summary line: "N passed, N failed".
#   PROG   the blockctl binary to test (default: ./blockctl)
#   BUILD  where the unit test binaries are (default: build)
#   JOBS   suites run in parallel (default: number of CPUs)
#   ONLY   run only suites whose path matches this regular expression
#          (ONLY=agent-jobs JOBS=1 tests/run.sh, or make check ONLY=...)
# A "# done:" line is printed as each suite ends; then every suite's TAP.
# SPDX-License-Identifier: GPL-2.0-or-later
set -u
cd "$(dirname "$0")/.."
export PROG=${PROG:-$PWD/blockctl}
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
out=$(mktemp -d "${TMPDIR:-/tmp}/blockctl-tests.XXXXXX")
trap 'rm -rf "$out"' EXIT
# job journals of the commands the tests run go here, not to /var/lib/blockctl
export BLOCKCTL_STATE_DIR=${BLOCKCTL_STATE_DIR:-$out/state}

suites=()
for t in "$BUILD"/tests/unit/test-*; do
    [ -x "$t" ] && suites+=("$t")
done
for t in tests/cli/*.bats tests/interop/*.bats tests/crash/*.bats; do
    [ -f "$t" ] && suites+=("$t")
done
if [ -n "${ONLY:-}" ]; then
    sel=()
    for t in "${suites[@]}"; do [[ $t =~ $ONLY ]] && sel+=("$t"); done
    suites=("${sel[@]}")
fi

run_suite() {
    local t=$1 log=$2 start=$SECONDS
    case $t in
    *.bats) bats --tap "$t" >"$log" 2>&1 ;;
    *) "$t" >"$log" 2>&1 ;;
    esac
    echo "# exit status $? after $((SECONDS - start))s" >>"$log"
    # one line as each suite ends (the whole TAP follows at the end, in order)
    echo "# done: $t: $(grep -cE '^ok ' "$log") ok, $(grep -cE '^not ok ' "$log") not ok," \
        "$((SECONDS - start))s"
}

i=0
for t in "${suites[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    run_suite "$t" "$out/$i.log" &
    i=$((i + 1))
done
wait

pass=0 fail=0 skip=0
i=0
for t in "${suites[@]}"; do
    log=$out/$i.log
    echo "# --- $t"
    cat "$log"
    p=$(grep -cE '^ok ' "$log")
    f=$(grep -cE '^not ok ' "$log")
    s=$(grep -cE '^ok .*# [sS][kK][iI][pP]' "$log")
    planned=$(grep -oE '^1\.\.[0-9]+' "$log" | head -1 | cut -d. -f3)
    # a suite that died before finishing its plan counts as one failure
    if [ -z "$planned" ] || [ $((p + f)) -lt "$planned" ]; then
        if [ "$planned" != 0 ]; then
            echo "not ok - $t did not complete its plan"
            f=$((f + 1))
        fi
    fi
    pass=$((pass + p - s)) fail=$((fail + f)) skip=$((skip + s))
    i=$((i + 1))
done
echo "# skipped: $skip"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
