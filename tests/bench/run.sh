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
#   QEMU_IMG=qemu-img QEMU_IO=qemu-io QEMU_NBD=qemu-nbd
#   BENCH_CHAIN_MIB=2048              size of the chain of issues 3 and 4
#   AGENT_BENCH_DIR=/dev/shm/...      where the agent-* rows make their
#                                     images (tests/bench/agent.bash);
#                                     BENCH_ONLY=agent runs only those
#                                     (and the jobs-* rows of
#                                     tests/bench/jobs.bash: BENCH_ONLY=jobs;
#                                     JOBS_BENCH_RUNS=N rounds, default
#                                     BENCH_RUNS; JOBS_VERBOSE=1 prints
#                                     every run's figures)
#   QSD=qemu-storage-daemon NBD_WRITER=build/tests/tools/nbd-writer
#
# Non-time figures (throughputs, latencies, RSS: the agent-* rows) go
# through `figure` (below; used by tests/bench/agent.bash) and are printed in a second
# table: name, blockctl's value, the reference's, unit, ratio, target.
#
# Adding a benchmark (later issues): write a setup_NAME function that makes
# its images under $D (skip the work when they already exist, for
# BENCH_KEEP), and add to main():
#     if want NAME; then setup_NAME
#         bench NAME "$B cmd args" "$QEMU_IMG cmd args" RATIO [RSS_MIB]
#     fi
# In the command strings $B is blockctl, $D the bench folder.  Commands
# run with stdout to /dev/null; their exit statuses must agree.
#
# Optional variables for one bench call (VAR=... bench ...):
#   PREP_B / PREP_Q   shell code run (untimed) before every run of the
#                     blockctl / qemu command: fresh copies, deleted
#                     targets, a fresh NBD server.  Such commands are never
#                     repeated within one timed run.
#   ABS_S             absolute time target for blockctl (seconds); give
#                     TARGET_RATIO '-' when there is only that one.
#   REF               what the reference column runs (default: qemu)
# SPDX-License-Identifier: GPL-2.0-or-later
set -u

B=$(realpath "${1:-${BLOCKCTL:-./blockctl}}")
D=${BENCH_DIR:-/tmp/blockctl-bench}
RUNS=${BENCH_RUNS:-3}
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}
QEMU_NBD=${QEMU_NBD:-qemu-nbd}
GNU_TIME=/usr/bin/time

die() { echo "bench: $*" >&2; exit 2; }
[ -x "$B" ] || die "no blockctl binary at '$B'"
for t in "$QEMU_IMG" "$QEMU_IO" "$GNU_TIME"; do
    command -v "$t" >/dev/null || die "$t is missing (scripts/deps.sh test; apt-get install time)"
done

mkdir -p "$D" || die "cannot create $D"
# The qemu-nbd we start (one at a time; prep code runs in subshells, so
# the pid file, not a variable, says which one is running).
nbd_stop_all() {
    local pf=$D/nbd.pid pid
    [ -s "$pf" ] || return 0
    pid=$(cat "$pf")
    if kill "$pid" 2>/dev/null; then
        for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$pf"
}
cleanup() {
    nbd_stop_all
    agent_cleanup
    if [ -z "${BENCH_KEEP:-}" ]; then
        rm -rf "$D"
    else
        # keep the data sets, not the per-run targets and working copies
        rm -rf "$D/w" "$D"/t.* "$D"/*.sock "$D"/*.pid
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# the agent-* rows (agent_rows, agent_cleanup)
# shellcheck source=tests/bench/agent.bash
. "$(dirname "${BASH_SOURCE[0]}")/agent.bash"
# the jobs-* rows (jobs_rows; they use agent.bash's servers)
# shellcheck source=tests/bench/jobs.bash
. "$(dirname "${BASH_SOURCE[0]}")/jobs.bash"

RESULTS=()      # "name|b_sec|q_sec|ratio|b_rss_mib|q_rss_mib|target|rss_target|verdict"
MISSED=0
FAILED=0

# want NAME...: is any of these benchmarks selected by BENCH_ONLY?
want() {
    local n
    [ -z "${BENCH_ONLY:-}" ] && return 0
    for n in "$@"; do
        [[ $n =~ $BENCH_ONLY ]] && return 0
    done
    return 1
}

# Warm a file into the page cache.
warm() {
    cat "$@" >/dev/null
}

# Run a command INNER times (default 1), timed with $EPOCHREALTIME (no
# extra processes in the measured interval): prints "SECONDS STATUS", the
# seconds per run.  PREP (untimed) runs before each of them.
run_timed() {
    local cmd=$1 inner=${2:-1} prep=${3:-} t0 t1 st=0 k tot=0
    if [ -n "$prep" ]; then
        eval "$prep" >/dev/null 2>&1 || die "preparing for '$cmd' failed"
    fi
    t0=$EPOCHREALTIME
    for ((k = 0; k < inner; k++)); do
        eval "$cmd" >/dev/null 2>"$D/.stderr"
        st=$?
    done
    t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" -v n="$inner" -v s="$st" 'BEGIN { printf "%.6f %d\n", (b - a) / n, s }'
}

# The first (warm-up) run of a command, under GNU time: prints
# "SECONDS STATUS RSS_KIB".  It also warms the page cache and checks that
# the two commands agree.
run_first() {
    local cmd=$1 prep=${2:-} t0 t1 st rss
    if [ -n "$prep" ]; then
        eval "$prep" >/dev/null 2>&1 || die "preparing for '$cmd' failed"
    fi
    rm -f "$D/.rss"
    t0=$EPOCHREALTIME
    eval "$GNU_TIME -f %M -o \"\$D/.rss\" $cmd" >/dev/null 2>"$D/.stderr"
    st=$?
    t1=$EPOCHREALTIME
    rss=$(tail -1 "$D/.rss" 2>/dev/null)
    [[ $rss =~ ^[0-9]+$ ]] || rss=0
    awk -v a="$t0" -v b="$t1" -v s="$st" -v r="$rss" 'BEGIN { printf "%.6f %d %d\n", b - a, s, r }'
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.6f", v[int((NR + 1) / 2)] }'
}

# bench NAME 'blockctl cmd' 'qemu cmd' TARGET_RATIO [RSS_TARGET_MIB]
# (and PREP_B, PREP_Q, ABS_S, REF: see the top of this file)
bench() {
    local name=$1 bcmd=$2 qcmd=$3 target=$4 rss_target=${5:-}
    local prep_b=${PREP_B:-} prep_q=${PREP_Q:-} abs=${ABS_S:-} ref=${REF:-qemu}
    local bt=() qt=() brss=0 qrss=0 bst qst i t s

    echo "bench: $name ..." >&2
    # warm-up run of each (under GNU time, for the peak RSS), which also
    # checks that they agree
    local bt0 qt0
    read -r bt0 bst brss <<<"$(run_first "$bcmd" "$prep_b")"
    if [ "$bst" -gt 1 ]; then
        echo "bench: $name: blockctl failed (exit $bst): $(head -3 "$D/.stderr")" >&2
    fi
    read -r qt0 qst qrss <<<"$(run_first "$qcmd" "$prep_q")"
    if [ "$qst" -gt 1 ]; then
        echo "bench: $name: $ref failed (exit $qst): $(head -3 "$D/.stderr")" >&2
    fi
    if [ "$bst" != "$qst" ]; then
        echo "bench: $name: exit status differs: blockctl $bst, $ref $qst" >&2
        FAILED=$((FAILED + 1))
    fi
    # short commands: repeat each timed run so it lasts about 0.3 s
    local inner=1
    if [ -z "$prep_b$prep_q" ]; then
        inner=$(awk -v b="$bt0" -v q="$qt0" 'BEGIN { t = (b < q ? b : q); n = int(0.3 / (t > 0 ? t : 0.001))
            print (n < 1 ? 1 : (n > 100 ? 100 : n)) }')
    fi
    for ((i = 0; i < RUNS; i++)); do
        read -r t s <<<"$(run_timed "$bcmd" "$inner" "$prep_b")"
        bt+=("$t")
        [ "$s" = "$bst" ] || echo "bench: $name: blockctl exit status changed: $s" >&2
        read -r t s <<<"$(run_timed "$qcmd" "$inner" "$prep_q")"
        qt+=("$t")
    done
    local bmed qmed ratio verdict=met
    bmed=$(median "${bt[@]}")
    qmed=$(median "${qt[@]}")
    ratio=$(awk -v b="$bmed" -v q="$qmed" 'BEGIN { printf "%.2f", (q > 0 ? b / q : 99) }')
    if [ "$target" != - ] && awk -v r="$ratio" -v t="$target" 'BEGIN { exit !(r > t) }'; then
        verdict=MISSED
    fi
    if [ -n "$abs" ] && awk -v b="$bmed" -v t="$abs" 'BEGIN { exit !(b > t) }'; then
        verdict=MISSED
    fi
    if [ -n "$rss_target" ] && [ "$brss" -gt $((rss_target * 1024)) ]; then
        verdict=MISSED
    fi
    if [ "$target" = - ] && [ -z "$abs$rss_target" ]; then
        verdict=info
    fi
    [ "$verdict" = met ] || [ "$verdict" = info ] || MISSED=$((MISSED + 1))
    RESULTS+=("$name|$(printf %.4f "$bmed")|$(printf %.4f "$qmed")|$ratio|$((brss / 1024))|$((qrss / 1024))|$target|$rss_target|$verdict|$abs|$ref")
    printf 'bench: %s: blockctl %ss (%s), %s %ss (%s)%s\n' "$name" "$bmed" "${bt[*]}" \
        "$ref" "$qmed" "${qt[*]}" "$([ "$inner" -gt 1 ] && echo ", per run of $inner")" >&2
}

report() {
    local line name b q ratio brss qrss target rss_target verdict abs ref tgt
    [ "${#RESULTS[@]}" -eq 0 ] ||
        printf '\n%-24s %10s %10s %7s %12s %10s  %s\n' benchmark blockctl-s ref-s ratio \
            blockctl-RSS ref-RSS "target (reference)"
    for line in "${RESULTS[@]}"; do
        IFS='|' read -r name b q ratio brss qrss target rss_target verdict abs ref <<<"$line"
        tgt=
        [ "$target" = - ] || tgt="ratio<=$target"
        [ -z "$abs" ] || tgt="${tgt:+$tgt, }time<=${abs}s"
        [ -z "$rss_target" ] || tgt="$tgt, RSS<=${rss_target}MiB"
        printf '%-24s %10s %10s %7s %8s MiB %6s MiB  %s (%s)  %s\n' "$name" "$b" "$q" "$ratio" \
            "$brss" "$qrss" "$tgt" "$ref" "$verdict"
    done
    report_figures
    echo
    local total=$((${#RESULTS[@]} + ${#FIGURES[@]}))
    if [ "$MISSED" -eq 0 ] && [ "$FAILED" -eq 0 ]; then
        echo "bench: all $total targets met"
    else
        echo "bench: $MISSED of $total targets missed, $FAILED disagreements"
    fi
}

FIGURES=()  # "name|b_value|q_value|unit|ratio|target|verdict|ref"

# figure NAME B_VALUE REF_VALUE UNIT KIND TARGET REF
#   a non-time figure (a throughput, a latency, a memory size), measured
#   by the caller on both sides: KIND is 'higher' (ratio b/ref >= TARGET), 'lower'
#   (b <= ref * TARGET), 'max' (b <= TARGET, absolute) or 'info'.
#   REF_VALUE may be '-' (no reference).
figure() {
    local name=$1 b=$2 q=$3 unit=$4 kind=$5 target=$6 ref=$7 ratio=- verdict=met tgt
    if [ "$q" != - ] && [ "$b" != - ]; then
        ratio=$(awk -v b="$b" -v q="$q" 'BEGIN { printf "%.2f", (q > 0 ? b / q : 99) }')
    fi
    case $kind in
    higher) tgt="ratio>=$target"
        awk -v r="$ratio" -v t="$target" 'BEGIN { exit !(r != "-" && r >= t) }' || verdict=MISSED ;;
    lower) tgt="ratio<=$target"
        awk -v r="$ratio" -v t="$target" 'BEGIN { exit !(r != "-" && r <= t) }' || verdict=MISSED ;;
    max) tgt="<=$target $unit"
        awk -v b="$b" -v t="$target" 'BEGIN { exit !(b != "-" && b <= t) }' || verdict=MISSED ;;
    *) tgt=-; verdict=info ;;
    esac
    [ "$verdict" != MISSED ] || MISSED=$((MISSED + 1))
    FIGURES+=("$name|$b|$q|$unit|$ratio|$tgt|$verdict|$ref")
    printf 'bench: %s: blockctl %s %s, %s %s %s\n' "$name" "$b" "$unit" "$ref" "$q" "$unit" >&2
}

report_figures() {
    local line name b q unit ratio tgt verdict ref
    [ "${#FIGURES[@]}" -gt 0 ] || return 0
    printf '\n%-28s %12s %12s %-6s %7s  %s\n' figure blockctl reference unit ratio "target (reference)"
    for line in "${FIGURES[@]}"; do
        IFS='|' read -r name b q unit ratio tgt verdict ref <<<"$line"
        printf '%-28s %12s %12s %-6s %7s  %s (%s)  %s\n' "$name" "$b" "$q" "$unit" "$ratio" \
            "$tgt" "$ref" "$verdict"
    done
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

# The 2 GiB chain of issues 3 and 4: chain/base.qcow2 <- mid.qcow2 <-
# top.qcow2 (64 KiB clusters, relative backing names), about 43 % of the
# guest view is data: 2 MiB runs and 256 KiB / 128 KiB / 64 KiB extents,
# zero clusters over data and over holes, and 51 x 256 KiB of compressed
# clusters in the base.  The data is executable code (compresses about 3:1
# like a real disk), not a constant byte.
CHAIN_MIB=${BENCH_CHAIN_MIB:-2048}
make_patterns() {
    local big k
    [ -e "$D/pat7" ] && return
    big=$(ls -S /usr/bin/* /usr/lib/x86_64-linux-gnu/*.so* 2>/dev/null | head -8)
    # shellcheck disable=SC2086
    cat $big 2>/dev/null | head -c $((8 << 20)) >"$D/pat.all"
    [ "$(stat -c %s "$D/pat.all")" -eq $((8 << 20)) ] || base64 -w0 /dev/urandom | head -c $((8 << 20)) >"$D/pat.all"
    for k in 0 1 2 3 4 5 6 7; do
        dd if="$D/pat.all" of="$D/pat$k" bs=1M skip=$k count=1 status=none
    done
    rm -f "$D/pat.all"
}
chain_base_writes() {
    local i
    for ((i = 0; i < CHAIN_MIB; i++)); do
        case $((i % 10)) in
        0 | 1) echo "write -s $D/pat$((i % 8)) ${i}M 1M" ;;
        3) echo "write -s $D/pat$(((i + 1) % 8)) $((i * 1024 + 128))K 256K" ;;
        5) echo "write -s $D/pat$(((i + 2) % 8)) ${i}M 64K"
           echo "write -s $D/pat$(((i + 3) % 8)) $((i * 1024 + 320))K 64K"
           echo "write -s $D/pat$(((i + 4) % 8)) $((i * 1024 + 576))K 64K"
           echo "write -s $D/pat$(((i + 5) % 8)) $((i * 1024 + 960))K 64K" ;;
        7) [ $((i % 40)) -eq 7 ] && echo "write -c -s $D/pat$((i % 8)) ${i}M 256K" ;;
        esac
    done
}
chain_mid_writes() {
    local i
    for ((i = 0; i < CHAIN_MIB; i++)); do
        case $((i % 10)) in
        0) echo "write -z $((i * 1024 + 256))K 512K" ;;                # zero clusters over data
        2) echo "write -s $D/pat$(((i + 6) % 8)) ${i}M 1M" ;;          # new data in a hole
        8) echo "write -s $D/pat$((i % 8)) $((i * 1024 + 64))K 128K"
           echo "write -s $D/pat$(((i + 1) % 8)) $((i * 1024 + 640))K 128K" ;;
        esac
    done
}
chain_top_writes() {
    local i
    for ((i = 0; i < CHAIN_MIB; i++)); do
        case $((i % 10)) in
        1) echo "write -s $D/pat$(((i + 7) % 8)) $((i * 1024 + 128))K 256K" ;;  # over base data
        3) echo "write -z $((i * 1024 + 192))K 64K" ;;                 # small zero over data
        4) echo "write -s $D/pat$(((i + 3) % 8)) ${i}M 1M" ;;          # new data
        6) echo "write -s $D/pat$(((i + 5) % 8)) $((i * 1024 + 448))K 64K" ;;
        9) echo "write -z ${i}M 1M" ;;                                 # zero clusters over a hole
        esac
    done
}
setup_chain() {
    local c=$D/chain
    [ -e "$c/top.qcow2" ] && [ -e "$D/chain.raw" ] && return
    echo "bench: making the ${CHAIN_MIB} MiB chain base <- mid <- top ..." >&2
    mkdir -p "$c"
    make_patterns
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k "$c/base.qcow2" "${CHAIN_MIB}M" || die create
    chain_base_writes | qio_batch "$c/base.qcow2" qcow2 || die "writing base failed"
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k -b base.qcow2 -F qcow2 "$c/mid.qcow2" || die create
    chain_mid_writes | qio_batch "$c/mid.qcow2" qcow2 || die "writing mid failed"
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k -b mid.qcow2 -F qcow2 "$c/top.qcow2" || die create
    chain_top_writes | qio_batch "$c/top.qcow2" qcow2 || die "writing top failed"
    # the guest view as a sparse raw file (source for nbdcopy and raw -> raw)
    "$QEMU_IMG" convert -q -f qcow2 -O raw "$c/top.qcow2" "$D/chain.raw" || die convert
    echo "bench: chain: $(du -sm "$c" | cut -f1) MiB allocated; guest view $(du -m "$D/chain.raw" | cut -f1) MiB of data in ${CHAIN_MIB} MiB" >&2
}

# A fresh working copy of the chain in $D/w (untimed; written back and
# in the page cache before the timed run starts).
fresh_chain() {
    rm -rf "$D/w"
    mkdir -p "$D/w"
    cp --sparse=always "$D"/chain/base.qcow2 "$D"/chain/mid.qcow2 "$D"/chain/top.qcow2 "$D/w/"
    sync -f "$D/w"
    warm "$D"/w/*.qcow2
}
# Delete the targets of the last run (and their write-back) before a run.
fresh_target() {
    rm -f "$D"/t.* "$D"/w/t.*
    sync -f "$D"
}

# A fresh qemu-nbd on $D/nbd.sock serving an empty FMT image of the chain's
# size (the server of the previous run is stopped first).
NBD_SOCK=
fresh_nbd() {
    local fmt=$1
    nbd_stop_all
    rm -f "$D/t.nbd" "$D/nbd.sock"
    sync -f "$D"
    if [ "$fmt" = raw ]; then
        truncate -s "${CHAIN_MIB}M" "$D/t.nbd"
    else
        "$QEMU_IMG" create -q -f qcow2 "$D/t.nbd" "${CHAIN_MIB}M" || return 1
    fi
    "$QEMU_NBD" -f "$fmt" -t -e 8 -k "$D/nbd.sock" --pid-file "$D/nbd.pid" --fork "$D/t.nbd" || return 1
    NBD_SOCK=$D/nbd.sock
}

# A 1 TiB qcow2 with a 64 KiB-granularity bitmap 'bm' that qemu-io's
# 10,000 scattered cluster writes dirtied (10,000 dirty extents).
setup_bitmap1t() {
    [ -e "$D/bm1t.qcow2" ] && return
    echo "bench: making a 1 TiB image with a bitmap of $SPARSE_CLUSTERS dirty extents ..." >&2
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k "$D/bm1t.qcow2.tmp" 1T || die create
    "$QEMU_IMG" bitmap --add -g 64k "$D/bm1t.qcow2.tmp" bm || die "bitmap --add"
    sparse_writes | qio_batch "$D/bm1t.qcow2.tmp" qcow2 || die "writing bm1t failed"
    mv "$D/bm1t.qcow2.tmp" "$D/bm1t.qcow2"
}

# Incremental copy: inc/disk.qcow2 (the chain flattened, 64 KiB clusters),
# inc/full.qcow2 its full backup, then bitmap 'B' added and 5 % of the
# clusters dirtied by scattered 64 KiB writes.
setup_incremental() {
    local i=$D/inc n
    [ -e "$i/disk.qcow2" ] && return
    echo "bench: making the incremental-copy disk ..." >&2
    mkdir -p "$i"
    # a VM disk that is written all over, as a used one is
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k "$i/disk.tmp" "${CHAIN_MIB}M" || die create
    for ((n = 0; n < CHAIN_MIB; n += 256)); do
        echo "write -P $((n / 256 + 1)) ${n}M 256M"
    done | qio_batch "$i/disk.tmp" qcow2 || die "filling the disk failed"
    "$QEMU_IMG" convert -q -f qcow2 -O qcow2 -o cluster_size=64k "$i/disk.tmp" "$i/full.qcow2" || die convert
    "$QEMU_IMG" bitmap --add -g 64k "$i/disk.tmp" B || die "bitmap --add"
    n=$((CHAIN_MIB * 16 * 5 / 100))
    awk -v n="$n" -v nc=$((CHAIN_MIB * 16)) -v pat="$D/pat5" 'BEGIN {
        x = 4242; c = 0
        while (c < n) {
            x = (x * 1103515245 + 12345) % 2147483648
            k = int(x / 64) % nc
            if (k in seen) continue
            seen[k] = 1; c++
            printf "write -s %s %d 64k\n", pat, k * 65536
        } }' | qio_batch "$i/disk.tmp" qcow2 || die "dirtying disk failed"
    mv "$i/disk.tmp" "$i/disk.qcow2"
}

# ---------------------------------------------------------------------------

machine() {
    local cpu mem fs
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    fs=$(df -PT "$D" | awk 'NR == 2 { print $2 " on " $1 " (" $7 ")" }')
    echo "bench: machine: $(nproc) CPUs ($cpu), $mem RAM, $D on $fs, kernel $(uname -r)"
    echo "bench: load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "bench: blockctl $B, $("$QEMU_IMG" --version | head -1), $(nbdcopy --version 2>/dev/null | head -1), $RUNS runs each, in $D"
}

main() {
    machine

    if want compare-1G-chains; then
        setup_compare
        warm "$D"/a0.qcow2 "$D"/a1.qcow2 "$D"/b0.qcow2 "$D"/b1.qcow2
        bench compare-1G-chains \
            "$B compare -f qcow2 -F qcow2 $D/a1.qcow2 $D/b1.qcow2" \
            "$QEMU_IMG compare -f qcow2 -F qcow2 $D/a1.qcow2 $D/b1.qcow2" 0.8
    fi

    if want map-json-1T-sparse info-1T-sparse; then
        setup_sparse
        warm "$D/sparse.qcow2"
        want map-json-1T-sparse && bench map-json-1T-sparse \
            "$B map --output=json -f qcow2 $D/sparse.qcow2" \
            "$QEMU_IMG map --output=json -f qcow2 $D/sparse.qcow2" 0.5 32
        want info-1T-sparse && bench info-1T-sparse \
            "$B info -f qcow2 $D/sparse.qcow2" \
            "$QEMU_IMG info -f qcow2 $D/sparse.qcow2" 0.5 32
    fi

    # ---- issue 3: the copy engine on a 2 GiB chain --------------------------
    local S=$D/chain/top.qcow2 U
    if want mirror-qcow2 mirror-qcow2-durable mirror-raw-raw-durable \
        mirror-zstd stream-all stream-base rebase-base rebase-flatten commit mirror-nbd-qcow2 \
        mirror-nbd-raw mirror-nbd-vs-nbdcopy mirror-raw-raw; then
        setup_chain
        warm "$D"/chain/*.qcow2 "$D/chain.raw"
    fi
    # The same work on both sides: qemu-img convert's target cache mode is
    # 'unsafe' (it never flushes the data), nbdcopy and cp never sync, so
    # they are measured against blockctl -t unsafe; blockctl's default
    # (the target flushed before it is renamed into place) is measured
    # against the reference followed by a sync.
    if want mirror-qcow2; then
        PREP_B=fresh_target PREP_Q=fresh_target \
        bench mirror-qcow2 \
            "$B mirror -t unsafe -f qcow2 -O qcow2 $S $D/t.qcow2" \
            "$QEMU_IMG convert -f qcow2 -O qcow2 $S $D/t.qcow2" 0.8 64
    fi
    if want mirror-qcow2-durable; then
        PREP_B=fresh_target PREP_Q=fresh_target REF='qemu-img+fsync' \
        bench mirror-qcow2-durable \
            "$B mirror -f qcow2 -O qcow2 $S $D/t.qcow2" \
            "$QEMU_IMG convert -f qcow2 -O qcow2 $S $D/t.qcow2 && sync $D/t.qcow2" 0.8 64
    fi
    if want mirror-zstd; then
        PREP_B=fresh_target PREP_Q=fresh_target \
        bench mirror-zstd \
            "$B mirror -t unsafe -f qcow2 -c -O qcow2 -o compression_type=zstd $S $D/t.qcow2" \
            "$QEMU_IMG convert -f qcow2 -c -O qcow2 -o compression_type=zstd $S $D/t.qcow2" 0.6 64
    fi
    if want stream-all; then
        PREP_B=fresh_chain PREP_Q=fresh_chain \
        bench stream-all \
            "$B stream -f qcow2 $D/w/top.qcow2" \
            "$QEMU_IMG rebase -f qcow2 -b '' $D/w/top.qcow2" 0.8 64
    fi
    if want stream-base; then
        PREP_B=fresh_chain PREP_Q=fresh_chain \
        bench stream-base \
            "$B stream -f qcow2 --base $D/w/base.qcow2 $D/w/top.qcow2" \
            "$QEMU_IMG rebase -f qcow2 -b $D/w/base.qcow2 -F qcow2 $D/w/top.qcow2" 0.8 64
    fi
    if want rebase-base; then
        PREP_B=fresh_chain PREP_Q=fresh_chain \
        bench rebase-base \
            "$B rebase -f qcow2 -b base.qcow2 -F qcow2 $D/w/top.qcow2" \
            "$QEMU_IMG rebase -f qcow2 -b base.qcow2 -F qcow2 $D/w/top.qcow2" 0.8 64
    fi
    if want rebase-flatten; then
        PREP_B=fresh_chain PREP_Q=fresh_chain \
        bench rebase-flatten \
            "$B rebase -f qcow2 -b '' $D/w/top.qcow2" \
            "$QEMU_IMG rebase -f qcow2 -b '' $D/w/top.qcow2" 0.8 64
    fi
    if want commit; then
        PREP_B=fresh_chain PREP_Q=fresh_chain \
        bench commit \
            "$B commit -f qcow2 $D/w/top.qcow2" \
            "$QEMU_IMG commit -f qcow2 $D/w/top.qcow2" 0.8 64
    fi
    if want mirror-nbd-qcow2 mirror-nbd-raw mirror-nbd-vs-nbdcopy; then
        U="nbd+unix:///?socket=$D/nbd.sock"
        want mirror-nbd-qcow2 && PREP_B='fresh_nbd qcow2' PREP_Q='fresh_nbd qcow2' \
            bench mirror-nbd-qcow2 \
                "$B mirror -t unsafe -f qcow2 $S '$U'" \
                "$QEMU_IMG convert -n -f qcow2 -O raw $S '$U'" 0.9 64
        want mirror-nbd-raw && PREP_B='fresh_nbd raw' PREP_Q='fresh_nbd raw' \
            bench mirror-nbd-raw \
                "$B mirror -t unsafe -f qcow2 $S '$U'" \
                "$QEMU_IMG convert -n -f qcow2 -O raw $S '$U'" 0.9 64
        want mirror-nbd-vs-nbdcopy && command -v nbdcopy >/dev/null &&
            PREP_B='fresh_nbd qcow2' PREP_Q='fresh_nbd qcow2' REF=nbdcopy \
            bench mirror-nbd-vs-nbdcopy \
                "$B mirror -t unsafe -f raw $D/chain.raw '$U'" \
                "nbdcopy $D/chain.raw '$U'" 0.9 64
        nbd_stop_all
    fi
    if want mirror-raw-raw; then
        PREP_B=fresh_target PREP_Q=fresh_target REF=cp \
        bench mirror-raw-raw \
            "$B mirror -t unsafe -f raw -O raw $D/chain.raw $D/t.raw" \
            "cp --sparse=always $D/chain.raw $D/t.raw" 1.2 64
    fi
    if want mirror-raw-raw-durable; then
        PREP_B=fresh_target PREP_Q=fresh_target REF=cp+fsync \
        bench mirror-raw-raw-durable \
            "$B mirror -f raw -O raw $D/chain.raw $D/t.raw" \
            "cp --sparse=always $D/chain.raw $D/t.raw && sync $D/t.raw" 1.2 64
    fi

    rm -rf "$D/w" "$D"/t.*

    # ---- issue 4: bitmaps -----------------------------------------------------
    if want bitmap-dump-1T-10k bitmap-list-1T; then
        setup_bitmap1t
        warm "$D/bm1t.qcow2"
        want bitmap-dump-1T-10k && ABS_S=0.1 REF=qemu-nbd+nbdinfo \
            bench bitmap-dump-1T-10k \
                "$B bitmap --dump -f qcow2 $D/bm1t.qcow2 bm" \
                "nbdinfo --map=qemu:dirty-bitmap:bm -- [ $QEMU_NBD -r -f qcow2 -B bm $D/bm1t.qcow2 ]" - 64
        want bitmap-list-1T && ABS_S=0.1 REF=qemu-img-info \
            bench bitmap-list-1T \
                "$B bitmap --list -f qcow2 $D/bm1t.qcow2" \
                "$QEMU_IMG info -f qcow2 $D/bm1t.qcow2" - 64
    fi
    if want incremental-5pct; then
        setup_chain
        setup_incremental
        warm "$D"/inc/*.qcow2
        PREP_B=fresh_target PREP_Q=fresh_target REF='blockctl full mirror' \
        bench incremental-5pct \
            "$B mirror -f qcow2 --sync=bitmap --bitmap B -B $D/inc/full.qcow2 -F qcow2 -O qcow2 $D/inc/disk.qcow2 $D/t.inc.qcow2" \
            "$B mirror -f qcow2 -O qcow2 $D/inc/disk.qcow2 $D/t.full2.qcow2" 0.10 64
    fi

    # ---- the agent: NBD export, guest latency, live snapshot, memory ----------
    agent_rows

    # ---- live jobs through the agent (issue 10) ------------------------------
    jobs_rows

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
