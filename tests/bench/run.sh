#!/bin/bash
# Side-by-side benchmarks: blockctl against qemu-img on the same work.
#
#   tests/bench/run.sh [BLOCKCTL_BINARY]          (make bench)
#
# Each benchmark runs both commands once to warm the page cache, then
# BENCH_RUNS times each (alternating), and reports the median wall time of
# each, the ratio blockctl/qemu, and blockctl's peak RSS (GNU time's %M).
# A benchmark has a time target (ratio at most TARGET) and optionally a
# peak-RSS target; the last lines say which were met.
#
# Environment:
#   BENCH_DIR=/tmp/blockctl-bench   where images are made (removed after)
#   BENCH_RUNS=3                    timed runs per command (median taken)
#   BENCH_ONLY=REGEX                run only benchmarks whose name matches
#   BENCH_KEEP=1                    keep BENCH_DIR (and reuse images in it)
#   BENCH_STRICT=1                  exit 1 when a target is missed
#   QEMU_IMG=qemu-img QEMU_IO=qemu-io
#
# Adding a benchmark (later issues): write a setup_NAME function that makes
# its images under $D (skip the work when they already exist, for
# BENCH_KEEP), and add to main():
#     if want 'NAME'; then setup_NAME
#         bench NAME "$B cmd args" "$QEMU_IMG cmd args" RATIO [RSS_MIB]
#     fi
# In the command strings $B is blockctl, $D the bench folder.  Commands
# run with stdout to /dev/null; their exit statuses must agree.
# SPDX-License-Identifier: GPL-2.0-or-later
set -u

B=$(realpath "${1:-${BLOCKCTL:-./blockctl}}")
D=${BENCH_DIR:-/tmp/blockctl-bench}
RUNS=${BENCH_RUNS:-3}
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}
GNU_TIME=/usr/bin/time

die() { echo "bench: $*" >&2; exit 2; }
[ -x "$B" ] || die "no blockctl binary at '$B'"
for t in "$QEMU_IMG" "$QEMU_IO" "$GNU_TIME"; do
    command -v "$t" >/dev/null || die "$t is missing (scripts/deps.sh test; apt-get install time)"
done

mkdir -p "$D" || die "cannot create $D"
cleanup() {
    if [ -z "${BENCH_KEEP:-}" ]; then
        rm -rf "$D"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

RESULTS=()      # "name|b_sec|q_sec|ratio|b_rss_mib|q_rss_mib|target|rss_target|verdict"
MISSED=0
FAILED=0

want() {
    [ -z "${BENCH_ONLY:-}" ] || [[ $1 =~ $BENCH_ONLY ]]
}

# Warm a file into the page cache.
warm() {
    cat "$@" >/dev/null
}

# Run a command INNER times (default 1), timed with $EPOCHREALTIME (no
# extra processes in the measured interval): prints "SECONDS STATUS", the
# seconds per run.
run_timed() {
    local cmd=$1 inner=${2:-1} t0 t1 st=0 k
    t0=$EPOCHREALTIME
    for ((k = 0; k < inner; k++)); do
        eval "$cmd" >/dev/null 2>"$D/.stderr"
        st=$?
    done
    t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" -v n="$inner" -v s="$st" 'BEGIN { printf "%.6f %d\n", (b - a) / n, s }'
}

# Peak RSS of one run of a command, in KiB (GNU time's %M).
run_rss() {
    local cmd=$1
    eval "$GNU_TIME -f %M -o \"\$D/.rss\" $cmd" >/dev/null 2>&1
    tail -1 "$D/.rss" 2>/dev/null || echo 0
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.6f", v[int((NR + 1) / 2)] }'
}

# bench NAME 'blockctl cmd' 'qemu cmd' TARGET_RATIO [RSS_TARGET_MIB]
bench() {
    local name=$1 bcmd=$2 qcmd=$3 target=$4 rss_target=${5:-}
    local bt=() qt=() brss=0 qrss=0 bst qst i t s

    echo "bench: $name ..." >&2
    # warm-up run of each, which also checks that they agree
    local bt0 qt0
    read -r bt0 bst <<<"$(run_timed "$bcmd")"
    if [ "$bst" -gt 1 ]; then
        echo "bench: $name: blockctl failed (exit $bst): $(head -3 "$D/.stderr")" >&2
    fi
    read -r qt0 qst <<<"$(run_timed "$qcmd")"
    if [ "$bst" != "$qst" ]; then
        echo "bench: $name: exit status differs: blockctl $bst, qemu $qst" >&2
        FAILED=$((FAILED + 1))
    fi
    # short commands: repeat each timed run so it lasts about 0.3 s
    local inner
    inner=$(awk -v b="$bt0" -v q="$qt0" 'BEGIN { t = (b < q ? b : q); n = int(0.3 / (t > 0 ? t : 0.001))
        print (n < 1 ? 1 : (n > 100 ? 100 : n)) }')
    brss=$(run_rss "$bcmd")
    qrss=$(run_rss "$qcmd")
    for ((i = 0; i < RUNS; i++)); do
        read -r t s <<<"$(run_timed "$bcmd" "$inner")"
        bt+=("$t")
        [ "$s" = "$bst" ] || echo "bench: $name: blockctl exit status changed: $s" >&2
        read -r t s <<<"$(run_timed "$qcmd" "$inner")"
        qt+=("$t")
    done
    local bmed qmed ratio verdict=met
    bmed=$(median "${bt[@]}")
    qmed=$(median "${qt[@]}")
    ratio=$(awk -v b="$bmed" -v q="$qmed" 'BEGIN { printf "%.2f", (q > 0 ? b / q : 99) }')
    if awk -v r="$ratio" -v t="$target" 'BEGIN { exit !(r > t) }'; then
        verdict=MISSED
    fi
    if [ -n "$rss_target" ] && [ "$brss" -gt $((rss_target * 1024)) ]; then
        verdict=MISSED
    fi
    [ "$verdict" = met ] || MISSED=$((MISSED + 1))
    RESULTS+=("$name|$(printf %.4f "$bmed")|$(printf %.4f "$qmed")|$ratio|$((brss / 1024))|$((qrss / 1024))|$target|$rss_target|$verdict")
    printf 'bench: %s: blockctl %ss (%s), qemu %ss (%s)%s\n' "$name" "$bmed" "${bt[*]}" \
        "$qmed" "${qt[*]}" "$([ "$inner" -gt 1 ] && echo ", per run of $inner")" >&2
}

report() {
    local line name b q ratio brss qrss target rss_target verdict
    printf '\n%-22s %10s %10s %7s %12s %10s  %s\n' benchmark blockctl-s qemu-s ratio \
        blockctl-RSS qemu-RSS target
    for line in "${RESULTS[@]}"; do
        IFS='|' read -r name b q ratio brss qrss target rss_target verdict <<<"$line"
        printf '%-22s %10s %10s %7s %9s MiB %6s MiB  <=%s%s  %s\n' "$name" "$b" "$q" "$ratio" \
            "$brss" "$qrss" "$target" "${rss_target:+, RSS<=${rss_target}MiB}" "$verdict"
    done
    echo
    for line in "${RESULTS[@]}"; do
        IFS='|' read -r name b q ratio brss qrss target rss_target verdict <<<"$line"
        printf 'bench: target %-20s ratio %s (<= %s)%s: %s\n' "$name" "$ratio" "$target" \
            "${rss_target:+, RSS $brss MiB (<= $rss_target MiB)}" "$verdict"
    done
    if [ "$MISSED" -eq 0 ] && [ "$FAILED" -eq 0 ]; then
        echo "bench: all ${#RESULTS[@]} targets met"
    else
        echo "bench: $MISSED of ${#RESULTS[@]} targets missed, $FAILED disagreements"
    fi
}

# ---------------------------------------------------------------------------
# Data sets

# qemu-io on $1 (format $2) with the commands read from stdin, in batches
# of 500 -c arguments per invocation.
qio_batch() {
    local img=$1 fmt=$2 args=() line n=0
    while IFS= read -r line; do
        args+=(-c "$line")
        n=$((n + 1))
        if [ "$n" -ge 500 ]; then
            "$QEMU_IO" -t unsafe -f "$fmt" "${args[@]}" "$img" >/dev/null || die "qemu-io on $img failed"
            args=(); n=0
        fi
    done
    if [ "$n" -gt 0 ]; then
        "$QEMU_IO" -t unsafe -f "$fmt" "${args[@]}" "$img" >/dev/null || die "qemu-io on $img failed"
    fi
}

# Two 1 GiB chains (base + overlay each) with the same guest contents and
# different layouts; about 40 % of the disk is data.
#   A: 64 KiB clusters in both layers;  B: base 32 KiB clusters (a convert
#   of A's base), overlay 128 KiB clusters with A's overlay writes replayed.
COMPARE_MIB=${BENCH_COMPARE_MIB:-1024}
base_writes() {
    local i
    for ((i = 0; i < COMPARE_MIB; i++)); do
        case $((i % 5)) in
        0) echo "write -P $((i % 250 + 1)) ${i}M 1M" ;;
        1) echo "write -P $(((i * 7) % 250 + 1)) ${i}M 768K"
           echo "write -P 0xaa $((i * 1024 + 768))K 256K" ;;
        esac
    done
}
overlay_writes() {
    local i
    for ((i = 0; i < COMPARE_MIB; i++)); do
        case $((i % 10)) in
        0) echo "write -P $(((i * 13) % 250 + 3)) $((i * 1024 + 256))K 512K" ;;
        1) echo "write -z ${i}M 1M" ;;                       # zeroes over base data
        2) echo "write -P $(((i * 3) % 250 + 2)) ${i}M 1M" ;; # new data in a hole
        6) echo "write -P 0x5c $((i * 1024 + 64))K 192K" ;;  # partial, in a hole
        esac
    done
}
setup_compare() {
    [ -e "$D/b1.qcow2" ] && return
    echo "bench: making two 1 GiB chains ..." >&2
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k "$D/a0.qcow2" "${COMPARE_MIB}M" || die create
    base_writes | qio_batch "$D/a0.qcow2" qcow2 || die "writing a0 failed"
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k -b a0.qcow2 -F qcow2 "$D/a1.qcow2" || die create
    overlay_writes | qio_batch "$D/a1.qcow2" qcow2 || die "writing a1 failed"
    "$QEMU_IMG" convert -q -f qcow2 -O qcow2 -o cluster_size=32k "$D/a0.qcow2" "$D/b0.qcow2" || die convert
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=128k -b b0.qcow2 -F qcow2 "$D/b1.qcow2" || die create
    overlay_writes | qio_batch "$D/b1.qcow2" qcow2 || die "writing b1 failed"
    "$QEMU_IMG" compare -q -f qcow2 -F qcow2 "$D/a1.qcow2" "$D/b1.qcow2" ||
        die "the two chains differ (qemu-img compare)"
}

# A 1 TiB qcow2 (64 KiB clusters) with 10,000 clusters written at
# pseudo-random offsets (a fixed LCG, so every run makes the same image).
SPARSE_CLUSTERS=${BENCH_SPARSE_CLUSTERS:-10000}
sparse_writes() {
    # bash arithmetic is 64-bit (awk's is not exact at these magnitudes)
    local x=12345 c count=0 nclusters=$((1 << 24))   # 1 TiB / 64 KiB
    declare -A seen
    while [ "$count" -lt "$SPARSE_CLUSTERS" ]; do
        x=$(((x * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff))
        c=$(((x >> 20) % nclusters))
        [ -n "${seen[$c]:-}" ] && continue
        seen[$c]=1
        count=$((count + 1))
        echo "write -P $((count % 250 + 1)) $((c * 65536)) 64k"
    done
}
setup_sparse() {
    [ -e "$D/sparse.qcow2" ] && return
    echo "bench: making a 1 TiB sparse image with $SPARSE_CLUSTERS clusters ..." >&2
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k "$D/sparse.qcow2" 1T || die create
    sparse_writes | qio_batch "$D/sparse.qcow2" qcow2 || die "writing sparse.qcow2 failed"
}

# ---------------------------------------------------------------------------

main() {
    echo "bench: blockctl $B, $("$QEMU_IMG" --version | head -1), $RUNS runs each, in $D" >&2

    if want 'compare'; then
        setup_compare
        warm "$D"/a0.qcow2 "$D"/a1.qcow2 "$D"/b0.qcow2 "$D"/b1.qcow2
        bench compare-1G-chains \
            "$B compare -f qcow2 -F qcow2 $D/a1.qcow2 $D/b1.qcow2" \
            "$QEMU_IMG compare -f qcow2 -F qcow2 $D/a1.qcow2 $D/b1.qcow2" 0.8
    fi

    if want 'map|info'; then
        setup_sparse
        warm "$D/sparse.qcow2"
        want 'map' && bench map-json-1T-sparse \
            "$B map --output=json -f qcow2 $D/sparse.qcow2" \
            "$QEMU_IMG map --output=json -f qcow2 $D/sparse.qcow2" 0.5 32
        want 'info' && bench info-1T-sparse \
            "$B info -f qcow2 $D/sparse.qcow2" \
            "$QEMU_IMG info -f qcow2 $D/sparse.qcow2" 0.5 32
    fi

    report
    if [ "$FAILED" -gt 0 ]; then
        exit 2
    fi
    if [ -n "${BENCH_STRICT:-}" ] && [ "$MISSED" -gt 0 ]; then
        exit 1
    fi
    exit 0
}

main
