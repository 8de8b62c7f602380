# The live jobs' figures (issue 10, section 6) for tests/bench/run.sh
# (sourced by it, after agent.bash, whose servers it uses): blockctl agent
# and qemu-storage-daemon 7.2 doing the same QMP on the same chain, in the
# same run.  Rows (all named jobs-*, so BENCH_ONLY=jobs runs just these):
#   jobs-mirror-ready           drive-mirror sync=full to a new qcow2, idle
#                               guest: seconds to BLOCK_JOB_READY (<= 1.0x QSD)
#   jobs-p99-before-500         guest write p99 at 500 writes/s before the
#                               job starts (info: the machine's floor now)
#   jobs-p99-copy-500           guest write p99 during the copy (from the
#                               job command to READY), background mode
#                               (<= 3 ms)
#   jobs-pivot-gap-{500,2000}   the longest a guest write overlapping the
#                               pivot took (from block-job-complete to
#                               BLOCK_JOB_COMPLETED), background (<= 5 ms)
#   jobs-{wb,auto}-p99-copy-500 write-blocking / auto (the agent's) against
#                               QSD's write-blocking: p99 during the copy
#                               at 500 writes/s (<= 10 ms)
#   jobs-{wb,auto}-p50-copy-2000  the same at 2000 writes/s: p50 (<= 5 ms)
#   jobs-{wb,auto}-pivot-gap-2000 and the pivot gap of those runs (<= 5 ms)
#   jobs-stream-live            block-stream (everything below the top),
#                               idle: MiB/s of the data pulled up, against
#                               the offline `blockctl stream` (>= 0.8x)
#   jobs-commit-live            block-commit of the active layer into the
#                               base, to READY then complete, idle: MiB/s
#                               of the top's data, against the offline
#                               `blockctl commit` (>= 0.8x)
#   jobs-{stream,commit}-vs-qsd the same live MiB/s against QSD's (info)
#   jobs-rss-peak               the agent's VmHWM, the highest of all these
#                               runs (<= 64 MiB), QSD's alongside
# Every figure is the median of JOBS_BENCH_RUNS (default BENCH_RUNS) runs;
# the servers alternate within a round.
#
# The chain: a 4 GiB qcow2 base (64 KiB clusters) holding 1.5 GiB of data
# in 6 MiB runs, under a top holding 256 MiB of new data and 64 MiB over
# the base's: 1.75 GiB of guest data.  It is made once in $A/jchain (kept
# with BENCH_KEEP); each run gets a fresh copy of what it writes ($A/jw).
# Images live on /dev/shm (AGENT_BENCH_DIR), so both servers and the
# offline commands see the page cache, not the disk; all of it is removed
# after.  Writers are tests/tools/nbd-writer (open loop, random 4 KiB
# writes, latency from the scheduled time), driven with the QMP by
# tests/bench/job-lat.py.
# SPDX-License-Identifier: GPL-2.0-or-later

JOBLAT=$(dirname "${BASH_SOURCE[0]}")/job-lat.py
JOBS_CHAIN_MIB=4096

# the chain: base runs of 6 MiB every 16 MiB; top: 1 MiB of new data at
# 6 MiB every 16 MiB, and 512 KiB over the base every 64 MiB
jobs_setup_chain() {
    local c=$A/jchain i
    [ -e "$c/top.qcow2" ] && return
    echo "bench: making the ${JOBS_CHAIN_MIB} MiB chain for the jobs rows ..." >&2
    mkdir -p "$c"
    "$QEMU_IMG" create -q -f qcow2 "$c/base.qcow2" "${JOBS_CHAIN_MIB}M" || die create
    for ((i = 0; i < JOBS_CHAIN_MIB; i += 16)); do
        echo "write -P $((i / 16 % 250 + 1)) ${i}M 6M"
    done | qio_batch "$c/base.qcow2" qcow2
    "$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 "$c/top.tmp" || die create
    for ((i = 0; i < JOBS_CHAIN_MIB; i += 16)); do
        echo "write -P $((i / 16 % 200 + 3)) $((i + 6))M 1M"
        [ $((i % 64)) -eq 0 ] && echo "write -P 0x5c $((i * 1024 + 256))K 512K"
    done | qio_batch "$c/top.tmp" qcow2
    mv "$c/top.tmp" "$c/top.qcow2"
}

# data MiB of the chain: in the top (what a commit copies) and below it
# (what a stream pulls up)
jobs_data_mib() {
    "$QEMU_IMG" map -f qcow2 --output=json "$A/jchain/top.qcow2" |
        jq --argjson top "$1" '[.[] | select(.data and ((.depth == 0) == $top)) | .length] | add / 1048576 | floor'
}

# jobs_fresh all|top: $A/jw/top.qcow2 a fresh copy; its base a fresh copy
# too (all: a commit writes it) or the kept one (top: nothing writes it)
jobs_fresh() {
    rm -rf "$A/jw" "$A"/t.qcow2
    mkdir -p "$A/jw"
    cp --sparse=always "$A/jchain/top.qcow2" "$A/jw/top.qcow2"
    if [ "$1" = all ]; then
        cp --sparse=always "$A/jchain/base.qcow2" "$A/jw/base.qcow2"
    else
        ln -s ../jchain/base.qcow2 "$A/jw/base.qcow2"
    fi
}

JOBS_HWM_agent=0
JOBS_HWM_qsd=0
declare -A JOBS_V   # "KEY" -> space-separated samples

# jobs_sample KEY VALUE: one more sample of a figure
jobs_sample() {
    [ -n "$2" ] && [ "$2" != null ] || return 0
    JOBS_V[$1]="${JOBS_V[$1]:-} $2"
}

# jobs_med KEY: the median of a figure's samples ('-' when none), 3 digits
jobs_med() {
    local v=${JOBS_V[$1]:-}
    [ -n "$v" ] || { echo -; return; }
    # shellcheck disable=SC2086
    median $v | awk '{ printf "%.3g", $1 }'
}

# jobs_run KIND JOB RATE [COPY-MODE]: one job on a fresh chain; sets
# JOBS_OUT to job-lat.py's JSON line (empty when it failed)
JOBS_OUT=
jobs_run() {
    local kind=$1 job=$2 rate=$3 mode=${4:-} out hwm args=()
    jobs_fresh "$([ "$job" = commit ] && echo all || echo top)"
    srv_start "$kind" "vda=$A/jw/top.qcow2"
    [ "$rate" = 0 ] || args=(--writer "$WRITER" --uri "$(srv_uri vda)" --rate "$rate")
    [ -z "$mode" ] || args+=(--copy-mode "$mode")
    if ! out=$(/usr/bin/python3 -B "$JOBLAT" --qmp "$A/srv.qmp" --job "$job" \
        --target "$A/t.qcow2" --dir "$A" "${args[@]}" vda 2>"$A/joblat.err"); then
        echo "bench: jobs: $kind $job at $rate/s ${mode:-}: $(head -3 "$A/joblat.err")" >&2
        FAILED=$((FAILED + 1))
        out=
    fi
    hwm=$(srv_hwm_kib)
    if [ "$kind" = agent ]; then
        [ "$hwm" -le "$JOBS_HWM_agent" ] || JOBS_HWM_agent=$hwm
    else
        [ "$hwm" -le "$JOBS_HWM_qsd" ] || JOBS_HWM_qsd=$hwm
    fi
    srv_stop
    rm -f "$A/t.qcow2"
    [ -z "${JOBS_VERBOSE:-}" ] || echo "bench: jobs: $kind $job $rate ${mode:-}: $out" >&2
    JOBS_OUT=$out
}

# jobs_mirror KIND RATE MODE PREFIX: a mirror run, its figures kept as
# PREFIX-{ready,before,p50,p99,gap}-KIND
jobs_mirror() {
    local kind=$1 rate=$2 mode=$3 p=$4 out
    jobs_run "$kind" mirror "$rate" "$mode"
    out=$JOBS_OUT
    [ -n "$out" ] || return 0
    jobs_sample "$p-ready-$kind" "$(jq -r .ready_s <<<"$out")"
    jobs_sample "$p-before-$kind" "$(jq -r .before_p99_ms <<<"$out")"
    jobs_sample "$p-p50-$kind" "$(jq -r .during_p50_ms <<<"$out")"
    jobs_sample "$p-p99-$kind" "$(jq -r .during_p99_ms <<<"$out")"
    jobs_sample "$p-gap-$kind" "$(jq -r .gap_ms <<<"$out")"
}

# jobs_live KIND JOB: a live stream or commit, idle: its seconds
jobs_live() {
    local out
    jobs_run "$1" "$2" 0
    out=$JOBS_OUT
    [ -n "$out" ] || return 0
    jobs_sample "$2-live-$1" "$(jq -r .done_s <<<"$out")"
}

# jobs_offline JOB: the offline command on a fresh chain: its seconds
jobs_offline() {
    local t0
    jobs_fresh "$([ "$1" = commit ] && echo all || echo top)"
    t0=$EPOCHREALTIME
    if ! "$B" "$1" -f qcow2 "$A/jw/top.qcow2" >/dev/null 2>"$A/offline.err"; then
        echo "bench: jobs: blockctl $1 failed: $(head -3 "$A/offline.err")" >&2
        FAILED=$((FAILED + 1))
        return 0
    fi
    jobs_sample "$1-offline" "$(elapsed "$t0")"
}

jobs_rows() {
    want jobs-mirror-ready jobs-p99-before-500 jobs-p99-copy-500 jobs-pivot-gap-500 \
        jobs-pivot-gap-2000 jobs-wb-p99-copy-500 jobs-auto-p99-copy-500 \
        jobs-wb-p50-copy-2000 jobs-auto-p50-copy-2000 jobs-wb-pivot-gap-2000 \
        jobs-auto-pivot-gap-2000 jobs-stream-live jobs-commit-live jobs-stream-vs-qsd \
        jobs-commit-vs-qsd jobs-rss-peak || return 0
    setup_agent
    local runs=${JOBS_BENCH_RUNS:-$RUNS} i kind start=$SECONDS nice0 nice=${AGENT_BENCH_NICE:--10}
    local stream_mib commit_mib
    nice0=$(ps -o ni= -p $$ | tr -d ' ')
    if [ "$nice" != 0 ] && renice -n "$nice" -p $$ >/dev/null 2>&1; then
        echo "bench: jobs rows at nice $nice (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    fi
    jobs_setup_chain
    stream_mib=$(jobs_data_mib false)
    commit_mib=$(jobs_data_mib true)
    echo "bench: jobs: chain of ${JOBS_CHAIN_MIB} MiB, $stream_mib MiB of data in the base, $commit_mib MiB in the top" >&2
    for ((i = 0; i < runs; i++)); do
        echo "bench: jobs: round $((i + 1)) of $runs ..." >&2
        for kind in agent qsd; do
            if want jobs-mirror-ready jobs-rss-peak; then
                jobs_mirror "$kind" 0 "" idle
            fi
            if want jobs-p99-before-500 jobs-p99-copy-500 jobs-pivot-gap-500 jobs-rss-peak; then
                jobs_mirror "$kind" 500 "" bg500
            fi
            want jobs-pivot-gap-2000 jobs-rss-peak && jobs_mirror "$kind" 2000 "" bg2000
            if want jobs-wb-p99-copy-500 jobs-auto-p99-copy-500 jobs-rss-peak; then
                jobs_mirror "$kind" 500 write-blocking wb500
                [ "$kind" = qsd ] || jobs_mirror "$kind" 500 auto auto500
            fi
            if want jobs-wb-p50-copy-2000 jobs-auto-p50-copy-2000 jobs-wb-pivot-gap-2000 \
                jobs-auto-pivot-gap-2000 jobs-rss-peak; then
                jobs_mirror "$kind" 2000 write-blocking wb2000
                [ "$kind" = qsd ] || jobs_mirror "$kind" 2000 auto auto2000
            fi
            if want jobs-stream-live jobs-stream-vs-qsd jobs-rss-peak; then
                jobs_live "$kind" stream
                [ "$kind" = qsd ] || jobs_offline stream
            fi
            if want jobs-commit-live jobs-commit-vs-qsd jobs-rss-peak; then
                jobs_live "$kind" commit
                [ "$kind" = qsd ] || jobs_offline commit
            fi
        done
    done
    renice -n "$nice0" -p $$ >/dev/null 2>&1
    local k
    for k in $(printf '%s\n' "${!JOBS_V[@]}" | sort); do
        echo "bench: jobs: $k:${JOBS_V[$k]}" >&2
    done

    local Q=qemu-storage-daemon
    want jobs-mirror-ready &&
        figure jobs-mirror-ready "$(jobs_med idle-ready-agent)" "$(jobs_med idle-ready-qsd)" s lower 1.0 $Q
    want jobs-p99-before-500 &&
        figure jobs-p99-before-500 "$(jobs_med bg500-before-agent)" "$(jobs_med bg500-before-qsd)" ms info - $Q
    want jobs-p99-copy-500 &&
        figure jobs-p99-copy-500 "$(jobs_med bg500-p99-agent)" "$(jobs_med bg500-p99-qsd)" ms max 3 $Q
    want jobs-pivot-gap-500 &&
        figure jobs-pivot-gap-500 "$(jobs_med bg500-gap-agent)" "$(jobs_med bg500-gap-qsd)" ms max 5 $Q
    want jobs-pivot-gap-2000 &&
        figure jobs-pivot-gap-2000 "$(jobs_med bg2000-gap-agent)" "$(jobs_med bg2000-gap-qsd)" ms max 5 $Q
    # the agent's write-blocking and auto, each against QSD's write-blocking
    local m
    for m in wb auto; do
        want "jobs-$m-p99-copy-500" &&
            figure "jobs-$m-p99-copy-500" "$(jobs_med "${m}500-p99-agent")" "$(jobs_med wb500-p99-qsd)" ms max 10 "$Q wb"
        want "jobs-$m-p50-copy-2000" &&
            figure "jobs-$m-p50-copy-2000" "$(jobs_med "${m}2000-p50-agent")" "$(jobs_med wb2000-p50-qsd)" ms max 5 "$Q wb"
        want "jobs-$m-pivot-gap-2000" &&
            figure "jobs-$m-pivot-gap-2000" "$(jobs_med "${m}2000-gap-agent")" "$(jobs_med wb2000-gap-qsd)" ms max 5 "$Q wb"
    done
    local j mib
    for j in stream commit; do
        mib=$stream_mib
        [ "$j" = stream ] || mib=$commit_mib
        want "jobs-$j-live" &&
            figure "jobs-$j-live" "$(jobs_mibs "$mib" "$j-live-agent")" "$(jobs_mibs "$mib" "$j-offline")" \
                MiB/s higher 0.8 "blockctl $j offline"
        want "jobs-$j-vs-qsd" &&
            figure "jobs-$j-vs-qsd" "$(jobs_mibs "$mib" "$j-live-agent")" "$(jobs_mibs "$mib" "$j-live-qsd")" \
                MiB/s info - $Q
    done
    want jobs-rss-peak &&
        figure jobs-rss-peak "$(awk -v k="$JOBS_HWM_agent" 'BEGIN { printf "%.1f", k / 1024 }')" \
            "$(awk -v k="$JOBS_HWM_qsd" 'BEGIN { printf "%.1f", k / 1024 }')" MiB max 64 $Q
    echo "bench: jobs rows done in $((SECONDS - start)) s (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    srv_stop
    rm -rf "$A/jw" "$A/t.qcow2"
    [ -n "${BENCH_KEEP:-}" ] || rm -rf "$A"
}

# jobs_mibs MIB KEY: MIB over the median seconds of KEY
jobs_mibs() {
    local v=${JOBS_V[$2]:-}
    [ -n "$v" ] || { echo -; return; }
    # shellcheck disable=SC2086
    mibs "$1" "$(median $v)"
}
