#!/bin/bash
# Build the libFuzzer harnesses (tests/fuzz/fuzz_*.c) with clang and
# ASan + UBSan into build-fuzz/, generate the seed corpus with qemu-img, and
# run each harness for FUZZ_TIME seconds (in parallel, one process each).
#
#   scripts/fuzz.sh                 build, make the corpus, run (make fuzz)
#   scripts/fuzz.sh build           only build
#   scripts/fuzz.sh run [TARGET..]  run (building when needed)
#   scripts/fuzz.sh repro TARGET FILE...   run the inputs once, verbosely
#
# Environment:
#   FUZZ_TIME=600         seconds per harness
#   FUZZ_TARGETS="fuzz_image fuzz_repair fuzz_nbdsrv"
#   FUZZ_JOBS=1           libFuzzer processes per harness (-fork)
#   FUZZ_ARGS=            more libFuzzer options
#   FUZZ_VERBOSE=1        let the library's stderr through
#   FUZZ_STRICT_REPAIR=1  fuzz_repair aborts when repair leaves corruptions
#   CC=clang
# Exit status: 0 when every harness ran clean, 1 on a crash, leak or
# timeout (its input is kept as build-fuzz/artifacts/TARGET-crash-*), 2 on
# a build or set-up failure.
# SPDX-License-Identifier: GPL-2.0-or-later
set -u
cd "$(dirname "$0")/.."

FUZZ_TIME=${FUZZ_TIME:-600}
FUZZ_TARGETS=${FUZZ_TARGETS:-"fuzz_image fuzz_repair fuzz_nbdsrv"}
FUZZ_JOBS=${FUZZ_JOBS:-1}
FUZZ_ARGS=${FUZZ_ARGS:-}
OUT=build-fuzz
PKGS="zlib libzstd libnbd json-c"

die() { echo "fuzz: $*" >&2; exit 2; }

ensure_clang() {
    if [ -z "${CC:-}" ] || ! command -v "$CC" >/dev/null || ! "$CC" --version 2>/dev/null | grep -q clang; then
        CC=clang
    fi
    if ! command -v "$CC" >/dev/null || ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n){return 0;}' |
            "$CC" -x c -fsanitize=fuzzer -o /dev/null - 2>/dev/null; then
        scripts/deps.sh fuzz || die "cannot install clang (scripts/deps.sh fuzz)"
        CC=clang
    fi
    command -v "$CC" >/dev/null || die "clang not found"
}

build() {
    ensure_clang
    local cflags="-O1 -g -fno-omit-frame-pointer -std=gnu11 -pthread -I. -D_GNU_SOURCE \
        -D_FILE_OFFSET_BITS=64 -DBLOCKCTL_VERSION=\"fuzz\" -fno-sanitize-recover=all \
        $(pkg-config --cflags $PKGS 2>/dev/null)"
    local libs
    libs=$(pkg-config --libs $PKGS 2>/dev/null || echo -lz -lzstd -lnbd -ljson-c)
    local srcs objs=() pids=() src obj
    srcs=$(ls lib/*.c lib/*/*.c formats/*.c formats/qcow2/*.c 2>/dev/null)
    mkdir -p "$OUT/obj"
    echo "fuzz: building with $($CC --version | head -1)"
    # library objects: instrumented for coverage, not linked with libFuzzer's main
    for src in $srcs; do
        obj=$OUT/obj/$(echo "${src%.c}" | tr / _).o
        objs+=("$obj")
        if [ ! -e "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find lib formats -name '*.h' -newer "$obj" 2>/dev/null | head -1)" ]; then
            $CC $cflags -fsanitize=fuzzer-no-link,address,undefined -c -o "$obj" "$src" &
            pids+=($!)
            # two at a time
            if [ ${#pids[@]} -ge "$(nproc)" ]; then
                wait "${pids[0]}" || die "compiling failed"
                pids=("${pids[@]:1}")
            fi
        fi
    done
    for p in "${pids[@]}"; do wait "$p" || die "compiling failed"; done
    for t in tests/fuzz/fuzz_*.c; do
        local name
        name=$(basename "$t" .c)
        $CC $cflags -fsanitize=fuzzer,address,undefined -o "$OUT/$name" "$t" "${objs[@]}" $libs ||
            die "linking $name failed"
    done
}

corpus() {
    if [ ! -d "$OUT/seeds" ] || [ tests/fuzz/make-corpus.sh -nt "$OUT/seeds" ]; then
        rm -rf "$OUT/seeds"
        scripts/deps.sh test >/dev/null 2>&1 || true
        tests/fuzz/make-corpus.sh "$OUT/seeds.tmp" || die "making the seed corpus failed"
        mv "$OUT/seeds.tmp" "$OUT/seeds"
    fi
    # NBD client sessions for fuzz_nbdsrv
    if [ ! -d "$OUT/seeds-nbd" ] || [ tests/fuzz/nbd-seeds.py -nt "$OUT/seeds-nbd" ]; then
        rm -rf "$OUT/seeds-nbd"
        python3 tests/fuzz/nbd-seeds.py "$OUT/seeds-nbd.tmp" || die "making the NBD seeds failed"
        mv "$OUT/seeds-nbd.tmp" "$OUT/seeds-nbd"
    fi
}

# seeds, dictionary and input size of a harness
seeds_of() { case $1 in fuzz_nbdsrv) echo "$OUT/seeds-nbd" ;; *) echo "$OUT/seeds" ;; esac; }
dict_of() { case $1 in fuzz_nbdsrv) echo tests/fuzz/nbd.dict ;; *) echo tests/fuzz/qcow2.dict ;; esac; }
max_len_of() { case $1 in fuzz_nbdsrv) echo 262144 ;; *) echo 1048576 ;; esac; }

# run_one TARGET: fuzz for FUZZ_TIME seconds; exit status of libFuzzer
run_one() {
    local t=$1 log=$OUT/logs/$1.log
    mkdir -p "$OUT/corpus/$t" "$OUT/artifacts" "$OUT/logs"
    local fork=()
    [ "$FUZZ_JOBS" -gt 1 ] && fork=(-fork="$FUZZ_JOBS" -ignore_crashes=0)
    ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=0:quarantine_size_mb=64} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    "$OUT/$t" "$OUT/corpus/$t" "$(seeds_of "$t")" \
        -dict="$(dict_of "$t")" \
        -max_total_time="$FUZZ_TIME" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
        -max_len="$(max_len_of "$t")" -len_control=200 -print_final_stats=1 \
        -artifact_prefix="$OUT/artifacts/$t-" "${fork[@]}" $FUZZ_ARGS >"$log" 2>&1
}

report() {
    local t=$1 rc=$2 log=$OUT/logs/$1.log runs secs
    runs=$(grep -E '^stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}')
    [ -z "$runs" ] && runs=$(grep -oE '^Done [0-9]+ runs' "$log" | tail -1 | awk '{print $2}')
    [ -z "$runs" ] && runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    secs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 | awk '{print $5}')
    printf 'fuzz: %-12s %s execs in %ss, corpus %s files, exit %d\n' "$t" "${runs:-?}" \
        "${secs:-?}" "$(ls "$OUT/corpus/$t" | wc -l)" "$rc"
    if [ "$rc" -ne 0 ]; then
        echo "fuzz: $t FAILED; log $log; artifacts:" >&2
        ls -1 "$OUT/artifacts/$t-"* 2>/dev/null | sed 's/^/  /' >&2
        grep -E 'ERROR: |SUMMARY: |runtime error|mismatch|==[0-9]+==' "$log" | head -20 >&2
    fi
}

# A harness that crashed leaves its temporary image (/dev/shm/blockctl-TAG-PID.img).
remove_stale_inputs() {
    local f pid
    for f in /dev/shm/blockctl-image-*.img /dev/shm/blockctl-repair-*.img \
             /dev/shm/blockctl-nbdsrv-*.img /tmp/blockctl-image-*.img \
             /tmp/blockctl-repair-*.img /tmp/blockctl-nbdsrv-*.img; do
        [ -e "$f" ] || continue
        pid=${f##*-}
        pid=${pid%.img}
        kill -0 "$pid" 2>/dev/null || rm -f "$f"
    done
}

run() {
    local targets=${*:-$FUZZ_TARGETS} pids=() t i=0 rc=0 status
    for t in $targets; do
        [ -x "$OUT/$t" ] || die "no harness $OUT/$t"
    done
    echo "fuzz: running $targets for ${FUZZ_TIME}s each (logs in $OUT/logs)"
    for t in $targets; do
        run_one "$t" &
        pids+=($!)
    done
    for t in $targets; do
        wait "${pids[$i]}"
        status=$?
        report "$t" "$status"
        [ "$status" -ne 0 ] && rc=1
        i=$((i + 1))
    done
    remove_stale_inputs
    [ "$rc" -eq 0 ] && echo "fuzz: all harnesses ran clean" || echo "fuzz: FAILURES (see above)"
    return $rc
}

repro() {
    local t=$1
    shift
    FUZZ_VERBOSE=${FUZZ_VERBOSE:-1} ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        "$OUT/$t" -runs=1 "$@"
    local rc=$?
    remove_stale_inputs
    return $rc
}

case "${1:-all}" in
build) build ;;
corpus) corpus ;;
run) shift; build && corpus && run "$@" ;;
repro) shift; [ $# -ge 2 ] || die "usage: $0 repro TARGET FILE..."; build; repro "$@" ;;
all) build && corpus && run ;;
*) die "usage: $0 [build|corpus|run [TARGET...]|repro TARGET FILE...]" ;;
esac
