# The agent's figures for tests/bench/run.sh (sourced by it): blockctl
# agent against qemu-nbd and qemu-storage-daemon on the same images, in
# the same run.  Rows (all named agent-*, so BENCH_ONLY=agent runs just
# these):
#   agent-nbd-read          nbdcopy export -> null:, 1.5 GiB of data (qcow2),
#                           agent vs qemu-nbd: MiB/s, target ratio >= 1.0
#   agent-nbd-write         nbdcopy 1 GiB raw -> export (a new qcow2),
#                           agent vs qemu-nbd: MiB/s, target ratio >= 1.0
#   agent-nbd-{read,write}-cpu  the server's CPU seconds for that copy
#                           (info: what a busy machine does not blur)
#   agent-randw-p99-500     guest 4 KiB random writes, open loop
#   agent-randw-p99-2000    (tests/tools/nbd-writer), 500 and 2000 writes/s:
#                           p99 latency from the scheduled time, agent vs
#                           qemu-storage-daemon, target <= QSD's
#   agent-snap-{1,4}disk-{idle,load}-rt    QMP transaction of
#                           blockdev-snapshot-sync, 1 or 4 disks, idle or
#                           at 500 writes/s on each disk: round trip (info)
#   agent-snap-{1,4}disk-load-gap   the longest time a guest write that
#                           overlapped the transaction took (<= 5 ms)
#   agent-snap-{1,4}disk-load-p99-other  p99 of the other writes of the
#                           same runs (info): the latency floor of the
#                           machine then, to read the gap against
#   agent-rss-4disk         the agent's VmHWM with 4 disks under load
#                           (a writer at 2000 writes/s and an nbdcopy
#                           backup read on each disk, 1 connection each):
#                           <= 64 MiB, QSD's alongside
#   agent-rss-4disk-16conn  the same with nbdcopy's default 4 connections
#                           per disk (16 in all)
# Every figure is the median of BENCH_RUNS runs; the servers alternate.
# These rows run at nice AGENT_BENCH_NICE (-10; 0 leaves it), servers and
# clients alike, so that other work on a shared machine disturbs the
# latency figures less.
# Images live on /dev/shm (AGENT_BENCH_DIR) so that the page cache, not
# the disk, is what both servers see; everything is removed after.
#
# Cache modes are the same on all sides: the agent uses the page cache
# (no O_DIRECT), qemu-nbd runs with --cache=writeback --aio=threads (its
# defaults, given explicitly), qemu-storage-daemon's file nodes with
# cache.direct=off,aio=threads.  nbdcopy uses 4 connections to each (both
# servers advertise multi-conn).
# SPDX-License-Identifier: GPL-2.0-or-later

QSD=${QSD:-qemu-storage-daemon}
if [ -n "${BENCH_KEEP:-}" ]; then
    A=${AGENT_BENCH_DIR:-/dev/shm/blockctl-bench-agent}
else
    A=${AGENT_BENCH_DIR:-/dev/shm/blockctl-bench-agent.$$}
fi
WRITER=${NBD_WRITER:-$(dirname "$B")/build/tests/tools/nbd-writer}
SNAPGAP=$(dirname "${BASH_SOURCE[0]}")/snap-gap.py
AGENT_RD_MIB=1536
AGENT_WR_MIB=1024
AGENT_DISK_MIB=256

# ---- servers ------------------------------------------------------------
# One server at a time, its pid in $A/srv.pid; srv_uri NAME gives the URI
# of a disk's export.  Disk arguments are NAME=FILE (qcow2).

srv_stop() {
    local pf=$A/srv.pid pid k
    [ -s "$pf" ] || return 0
    pid=$(cat "$pf")
    if kill "$pid" 2>/dev/null; then
        for ((k = 0; k < 50; k++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$pf" "$A/srv.nbd" "$A/srv.qmp"
}

SRV_KIND=
srv_start() {
    local kind=$1 d args=() n
    shift
    srv_stop
    SRV_KIND=$kind
    case $kind in
    agent)
        for d in "$@"; do args+=(--disk "$d,format=qcow2"); done
        "$B" agent --qmp "$A/srv.qmp" --nbd "unix:$A/srv.nbd" "${args[@]}" \
            --daemonize --pidfile "$A/srv.pid" >>"$A/srv.log" 2>&1 ;;
    qemu-nbd)
        [ $# -eq 1 ] || die "qemu-nbd serves one disk"
        "$QEMU_NBD" -f qcow2 --cache=writeback --aio=threads -t -e 8 -k "$A/srv.nbd" \
            --pid-file "$A/srv.pid" --fork "${1#*=}" >>"$A/srv.log" 2>&1 ;;
    qsd)
        args=(--chardev "socket,id=qmp0,path=$A/srv.qmp,server=on,wait=off"
              --monitor chardev=qmp0 --nbd-server "addr.type=unix,addr.path=$A/srv.nbd")
        for d in "$@"; do
            n=${d%%=*}
            args+=(--blockdev "driver=file,node-name=$n-file,filename=${d#*=},cache.direct=off,aio=threads"
                   --blockdev "driver=qcow2,node-name=$n,file=$n-file"
                   --export "type=nbd,id=$n-exp,node-name=$n,name=$n,writable=on")
        done
        "$QSD" "${args[@]}" --daemonize --pidfile "$A/srv.pid" >>"$A/srv.log" 2>&1 ;;
    esac || die "starting $kind failed: $(tail -3 "$A/srv.log")"
    [ -S "$A/srv.nbd" ] || die "$kind: no NBD socket"
}

srv_uri() {
    if [ "$SRV_KIND" = qemu-nbd ]; then
        echo "nbd+unix:///?socket=$A/srv.nbd"
    else
        echo "nbd+unix:///$1?socket=$A/srv.nbd"
    fi
}

# the server's CPU time so far (user + system), in seconds
CLK_TCK=$(getconf CLK_TCK)
srv_cpu_s() {
    awk -v hz="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$(cat "$A/srv.pid")/stat"
}

srv_hwm_kib() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$(cat "$A/srv.pid")/status"
}

# ---- data sets ------------------------------------------------------------

setup_agent() {
    mkdir -p "$A" || die "cannot create $A"
    [ -x "$WRITER" ] || die "no nbd-writer at $WRITER (make unit)"
    command -v "$QSD" >/dev/null || die "$QSD is missing"
    command -v nbdcopy >/dev/null || die "nbdcopy is missing"
    command -v jq >/dev/null || die "jq is missing"
}

# IMG FMT MIB FIRST_PATTERN: a new image of MIB MiB, all data (128 MiB
# runs of a byte), unless it is there (BENCH_KEEP)
make_full() {
    local img=$1 fmt=$2 mib=$3 p=$4 k
    [ -e "$img" ] && return
    echo "bench: making $img ..." >&2
    if [ "$fmt" = raw ]; then
        truncate -s "${mib}M" "$img.tmp"
    else
        "$QEMU_IMG" create -q -f "$fmt" "$img.tmp" "${mib}M" || die create
    fi
    for ((k = 0; k < mib; k += 128)); do
        echo "write -P $((k / 128 + p)) ${k}M 128M"
    done | qio_batch "$img.tmp" "$fmt"
    mv "$img.tmp" "$img"
}

# fresh_disks N SIZE_MIB: $A/d0.qcow2 ... empty, and the snapshot files gone
fresh_disks() {
    local k
    rm -f "$A"/d*.qcow2 "$A"/*-snap.qcow2
    for ((k = 0; k < $1; k++)); do
        "$QEMU_IMG" create -q -f qcow2 "$A/d$k.qcow2" "${2}M" || die create
    done
}

disk_args() {
    local k
    for ((k = 0; k < $1; k++)); do echo "vd$k=$A/d$k.qcow2"; done
}

# now: seconds, for timing a command
now_s() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }'; }

# ---- the rows ------------------------------------------------------------

# agent-nbd-read: nbdcopy export -> null: on each server, MiB/s
bench_agent_read() {
    local i kind t0 t c bt=() qt=() bc=() qc=()
    echo "bench: agent-nbd-read ..." >&2
    make_full "$A/rd.qcow2" qcow2 "$AGENT_RD_MIB" 1
    for ((i = 0; i <= RUNS; i++)); do       # run 0 warms up
        for kind in agent qemu-nbd; do
            srv_start "$kind" "vda=$A/rd.qcow2"
            t0=$(now_s)
            nbdcopy -C 4 "$(srv_uri vda)" null: || die "nbdcopy from $kind failed"
            t=$(elapsed "$t0")
            c=$(srv_cpu_s)
            srv_stop
            [ "$i" -eq 0 ] && continue
            if [ "$kind" = agent ]; then bt+=("$t"); bc+=("$c"); else qt+=("$t"); qc+=("$c"); fi
        done
    done
    echo "bench: agent-nbd-read: agent ${bt[*]} s (CPU ${bc[*]} s), qemu-nbd ${qt[*]} s (CPU ${qc[*]} s)" >&2
    figure agent-nbd-read "$(mibs "$AGENT_RD_MIB" "$(median "${bt[@]}")")" \
        "$(mibs "$AGENT_RD_MIB" "$(median "${qt[@]}")")" MiB/s higher 1.0 qemu-nbd
    # the server's CPU time for the copy (what a busy machine makes it wait for)
    figure agent-nbd-read-cpu "$(median "${bc[@]}" | sed 's/0*$//;s/\.$//')" \
        "$(median "${qc[@]}" | sed 's/0*$//;s/\.$//')" s info - qemu-nbd
}

mibs() { awk -v m="$1" -v t="$2" 'BEGIN { printf "%.0f", m / t }'; }

# agent-nbd-write: nbdcopy wr.raw -> export of a new qcow2, MiB/s
bench_agent_write() {
    local i kind t0 t c bt=() qt=() bc=() qc=()
    echo "bench: agent-nbd-write ..." >&2
    make_full "$A/wr.raw" raw "$AGENT_WR_MIB" 101
    # no warm-up run: the source was just written (in the page cache) and
    # every run writes a new image
    for ((i = 1; i <= RUNS; i++)); do
        for kind in agent qemu-nbd; do
            fresh_disks 1 "$AGENT_WR_MIB"
            srv_start "$kind" "vda=$A/d0.qcow2"
            t0=$(now_s)
            nbdcopy -C 4 "$A/wr.raw" "$(srv_uri vda)" || die "nbdcopy to $kind failed"
            t=$(elapsed "$t0")
            c=$(srv_cpu_s)
            srv_stop
            if [ "$i" -eq 1 ]; then
                "$QEMU_IMG" compare -q -f raw -F qcow2 "$A/wr.raw" "$A/d0.qcow2" ||
                    die "agent-nbd-write: $kind's copy differs from the source"
            fi
            if [ "$kind" = agent ]; then bt+=("$t"); bc+=("$c"); else qt+=("$t"); qc+=("$c"); fi
        done
    done
    rm -f "$A"/d*.qcow2
    echo "bench: agent-nbd-write: agent ${bt[*]} s (CPU ${bc[*]} s), qemu-nbd ${qt[*]} s (CPU ${qc[*]} s)" >&2
    figure agent-nbd-write "$(mibs "$AGENT_WR_MIB" "$(median "${bt[@]}")")" \
        "$(mibs "$AGENT_WR_MIB" "$(median "${qt[@]}")")" MiB/s higher 1.0 qemu-nbd
    figure agent-nbd-write-cpu "$(median "${bc[@]}" | sed 's/0*$//;s/\.$//')" \
        "$(median "${qc[@]}" | sed 's/0*$//;s/\.$//')" s info - qemu-nbd
}

# agent-randw-p99-RATE: nbd-writer at RATE on a new 1 GiB qcow2, p99 ms
bench_agent_randw() {
    local rate=$1 secs=${AGENT_WRITER_SECS:-3} i kind out p bp=() qp=() bm=() qm=() b50=() q50=()
    echo "bench: agent-randw-p99-$rate ..." >&2
    for ((i = 0; i < RUNS; i++)); do
        for kind in agent qsd; do
            fresh_disks 1 1024
            srv_start "$kind" "vda=$A/d0.qcow2"
            out=$("$WRITER" "$(srv_uri vda)" "$rate" "$secs" --seed $((i + 1))) ||
                die "nbd-writer on $kind failed: $out"
            srv_stop
            p=$(jq -r .p99_ms <<<"$out")
            if [ "$kind" = agent ]; then
                bp+=("$p"); bm+=("$(jq -r .max_ms <<<"$out")"); b50+=("$(jq -r .p50_ms <<<"$out")")
            else
                qp+=("$p"); qm+=("$(jq -r .max_ms <<<"$out")"); q50+=("$(jq -r .p50_ms <<<"$out")")
            fi
        done
    done
    rm -f "$A"/d*.qcow2
    echo "bench: agent-randw-p99-$rate: agent p99 ${bp[*]} (p50 ${b50[*]}; max ${bm[*]}), qsd p99 ${qp[*]} (p50 ${q50[*]}; max ${qm[*]}) ms" >&2
    figure "agent-randw-p99-$rate" "$(median "${bp[@]}" | sed 's/0*$//;s/\.$//')" \
        "$(median "${qp[@]}" | sed 's/0*$//;s/\.$//')" ms lower 1.0 qemu-storage-daemon
}

# agent-snap-Ndisk-MODE: the snapshot transaction on each server
bench_agent_snap() {
    local n=$1 mode=$2 i kind out rt gap w op om br=() qr=() bg=() qg=() key uris=() k names=()
    local bop=() qop=() bom=() qom=()
    local rate=0
    [ "$mode" = load ] && rate=${AGENT_SNAP_RATE:-500}
    echo "bench: agent-snap-${n}disk-$mode ..." >&2
    for ((k = 0; k < n; k++)); do names+=("vd$k"); done
    for ((i = 0; i < RUNS; i++)); do
        for kind in agent qsd; do
            fresh_disks "$n" "$AGENT_DISK_MIB"
            # shellcheck disable=SC2046
            srv_start "$kind" $(disk_args "$n")
            key=device
            [ "$kind" = qsd ] && key=node-name
            uris=()
            if [ "$rate" != 0 ]; then
                for ((k = 0; k < n; k++)); do uris+=(--uri "$(srv_uri "vd$k")"); done
            fi
            out=$(/usr/bin/python3 -B "$SNAPGAP" --qmp "$A/srv.qmp" --key "$key" --dir "$A" \
                --writer "$WRITER" --rate "$rate" --secs "${AGENT_SNAP_SECS:-2}" \
                "${uris[@]}" "${names[@]}") || die "agent-snap-${n}disk-$mode on $kind failed"
            srv_stop
            read -r rt gap w op om <<<"$out"
            if [ "$kind" = agent ]; then
                br+=("$rt"); bg+=("$gap"); bop+=("$op"); bom+=("$om")
            else
                qr+=("$rt"); qg+=("$gap"); qop+=("$op"); qom+=("$om")
            fi
        done
    done
    rm -f "$A"/d*.qcow2 "$A"/*-snap.qcow2
    echo "bench: agent-snap-${n}disk-$mode: agent rt ${br[*]} gap ${bg[*]}, qsd rt ${qr[*]} gap ${qg[*]} ms" >&2
    [ "$rate" = 0 ] || echo "bench: agent-snap-${n}disk-$mode: the other writes: agent p99 ${bop[*]} max ${bom[*]}, qsd p99 ${qop[*]} max ${qom[*]} ms" >&2
    figure "agent-snap-${n}disk-$mode-rt" "$(median "${br[@]}" | sed 's/0*$//;s/\.$//')" \
        "$(median "${qr[@]}" | sed 's/0*$//;s/\.$//')" ms info - qemu-storage-daemon
    if [ "$rate" != 0 ]; then
        figure "agent-snap-${n}disk-$mode-gap" "$(median "${bg[@]}" | sed 's/0*$//;s/\.$//')" \
            "$(median "${qg[@]}" | sed 's/0*$//;s/\.$//')" ms max 5 qemu-storage-daemon
        # the writes outside the transaction: the machine's latency floor now
        figure "agent-snap-${n}disk-$mode-p99-other" "$(median "${bop[@]}" | sed 's/0*$//;s/\.$//')" \
            "$(median "${qop[@]}" | sed 's/0*$//;s/\.$//')" ms info - qemu-storage-daemon
    fi
}

# agent-rss-4disk[-16conn]: VmHWM of each server with 4 disks (256 MiB of
# data each) under load: on each disk a guest writer at 2000 writes/s and
# an nbdcopy backup read to null: at the same time, with 1 connection per
# disk (4 in all) or nbdcopy's default 4 (16 in all)
bench_agent_rss() {
    local conns=$1 name=agent-rss-4disk i kind k pids=() b=() q=()
    local rate=${AGENT_RSS_RATE:-2000} secs=${AGENT_RSS_SECS:-2}
    [ "$conns" = 1 ] || name=agent-rss-4disk-$((4 * conns))conn
    echo "bench: $name ..." >&2
    make_full "$A/full.qcow2" qcow2 "$AGENT_DISK_MIB" 7
    for ((i = 0; i < RUNS; i++)); do
        for kind in agent qsd; do
            for ((k = 0; k < 4; k++)); do cp "$A/full.qcow2" "$A/d$k.qcow2"; done
            # shellcheck disable=SC2046
            srv_start "$kind" $(disk_args 4)
            pids=()
            for ((k = 0; k < 4; k++)); do
                "$WRITER" "$(srv_uri "vd$k")" "$rate" "$secs" --seed $((k + 1)) >/dev/null &
                pids+=($!)
                nbdcopy -C "$conns" "$(srv_uri "vd$k")" null: &
                pids+=($!)
            done
            for k in "${pids[@]}"; do
                wait "$k" || die "$name: a client of $kind failed"
            done
            if [ "$kind" = agent ]; then b+=("$(srv_hwm_kib)"); else q+=("$(srv_hwm_kib)"); fi
            srv_stop
        done
    done
    rm -f "$A"/d*.qcow2
    echo "bench: $name: agent ${b[*]} KiB, qsd ${q[*]} KiB" >&2
    figure "$name" "$(awk -v k="$(median "${b[@]}")" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "$(awk -v k="$(median "${q[@]}")" 'BEGIN { printf "%.1f", k / 1024 }')" MiB max 64 qemu-storage-daemon
}

agent_rows() {
    want agent-nbd-read agent-nbd-write agent-randw-p99-500 agent-randw-p99-2000 \
        agent-snap-1disk-idle-rt agent-snap-4disk-idle-rt agent-snap-1disk-load-rt \
        agent-snap-1disk-load-gap agent-snap-4disk-load-rt agent-snap-4disk-load-gap \
        agent-rss-4disk agent-rss-4disk-16conn || return 0
    setup_agent
    # Latency figures on a shared machine: both sides run at a higher
    # priority than the neighbours' work (AGENT_BENCH_NICE=0 to not)
    local nice0 nice=${AGENT_BENCH_NICE:--10} start=$SECONDS
    nice0=$(ps -o ni= -p $$ | tr -d ' ')
    if [ "$nice" != 0 ] && renice -n "$nice" -p $$ >/dev/null 2>&1; then
        echo "bench: agent rows at nice $nice (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    fi
    want agent-nbd-read && bench_agent_read
    want agent-nbd-write && bench_agent_write
    want agent-randw-p99-500 && bench_agent_randw 500
    want agent-randw-p99-2000 && bench_agent_randw 2000
    want agent-snap-1disk-idle-rt && bench_agent_snap 1 idle
    want agent-snap-4disk-idle-rt && bench_agent_snap 4 idle
    want agent-snap-1disk-load-rt agent-snap-1disk-load-gap && bench_agent_snap 1 load
    want agent-snap-4disk-load-rt agent-snap-4disk-load-gap && bench_agent_snap 4 load
    want agent-rss-4disk && bench_agent_rss 1
    want agent-rss-4disk-16conn && bench_agent_rss 4
    renice -n "$nice0" -p $$ >/dev/null 2>&1
    echo "bench: agent rows done in $((SECONDS - start)) s (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    srv_stop
    [ -n "${BENCH_KEEP:-}" ] || rm -rf "$A"
}

agent_cleanup() {
    srv_stop 2>/dev/null
    if [ -z "${BENCH_KEEP:-}" ]; then
        rm -rf "$A"
    else
        rm -f "$A"/d*.qcow2 "$A"/*-snap.qcow2 "$A"/srv.* "$A"/writer-*.log
    fi
}
