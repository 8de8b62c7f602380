#!/usr/bin/env bats
# A real guest, end to end: a Linux guest under qemu-system-x86_64 (TCG)
# whose disk is the agent's NBD export appends numbered, checksummed
# records (tests/guest/recwriter.c), each flushed, and prints "ACK n" on
# its serial console once n is durable.  While it writes: a live
# snapshot, a mirror with pivot, an active commit with pivot, and a
# kill -9 of the agent in the middle of a mirror, a restart from its
# state file and the mirror again.  Then QEMU itself (its qcow2 driver)
# boots the guest a second time on the final image, read-only, and the
# guest checks every record: each one acknowledged in the first boot must
# be there, intact.
#
# The guest (a Debian kernel, a busybox initramfs) is built at test time
# into $BUILD/guest by tests/guest/mkguest.sh from the packages of
# `scripts/deps.sh guest`; without them the tests are skipped.  The
# steps follow each other (one guest for the whole file); `make
# guest-test` runs this file alone.
#   GUEST_RATE   the guest's records a second at most (default 400)
#   GUEST_SECS   seconds the guest writes before each step (default 4)
#   GUEST_MIN    the fewest records the first boot must acknowledge
#                (default 1000)
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers

PY=/usr/bin/python3
ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)

setup_file() {
    requires_qemu
    requires_cmd qemu-system-x86_64 cpio cc
    [ -x "$PY" ] || skip "no $PY"
    local g="$ROOT/${BUILD:-build}/guest" err
    err=$("$ROOT/tests/guest/mkguest.sh" "$g" 2>&1) || skip "no guest: $err"
    export G=$BATS_FILE_TMPDIR
    # the sockets' paths must stay short
    export SOCKS
    SOCKS=$(mktemp -d /tmp/bguest.XXXXXX)
    export Q=$SOCKS/qmp.sock N=$SOCKS/nbd.sock KERNEL=$g/vmlinuz INITRD=$g/initramfs.gz
    export CON=$G/console.log
    # the agent's job journals (a killed mirror comes back from its own)
    export BLOCKCTL_STATE_DIR=$G/state
    cd "$G" || return 1
    qemu-img create -q -f qcow2 disk.qcow2 256M
    agent_start --disk "vda=$G/disk.qcow2" || return 1
    local start=$SECONDS
    # the first boot: the guest writes until it is killed
    guest_boot "$CON" "mode=write rate=${GUEST_RATE:-400}" -daemonize -pidfile "$G/qemu.pid" \
        -blockdev "driver=nbd,node-name=disk0,server.type=unix,server.path=$N,export=vda,reconnect-delay=30" ||
        { echo "qemu-system-x86_64 did not start" >&2; return 1; }
    wait_acks_past 10 120 || { echo "the guest wrote nothing: $(tail -n 5 "$CON")" >&2; return 1; }
    echo "$((SECONDS - start))" >"$G/boot-secs"
}

teardown_file() {
    [ -n "${G:-}" ] || return 0
    server_stop "$G/qemu.pid" KILL
    server_stop "$G/agent.pid" KILL
    rm -rf "${SOCKS:-/nonexistent}"
}

setup() {
    cd "$G" || return 1
    [ ! -f "$G/broken" ] || skip "an earlier step failed: $(cat "$G/broken")"
}

teardown() {
    # a step that fails leaves the guest and the agent in no known state
    [ -n "${BATS_TEST_COMPLETED:-}" ] || [ -n "${BATS_TEST_SKIPPED:-}" ] ||
        echo "$BATS_TEST_DESCRIPTION" >"$G/broken"
}

# agent_start ARGS...: the agent with its state file, in the background
agent_start() {
    "$PROG" agent --qmp "$Q" --nbd "unix:$N" --state "$G/agent.state" "$@" \
        --daemonize --pidfile "$G/agent.pid" 2>>"$G/agent.log" 3>&- ||
        { fail "the agent did not start: $(tail -n 3 "$G/agent.log")"; return 1; }
}

# guest_boot CONSOLE KERNEL-ARGS QEMU-ARGS...: a TCG guest whose disk is
# the node disk0 that QEMU-ARGS define (killed after BOOT_TIMEOUT seconds
# if set)
guest_boot() {
    local con=$1 args=$2 wrap=()
    shift 2
    rm -f "$con"
    [ -z "${BOOT_TIMEOUT:-}" ] || wrap=(timeout "$BOOT_TIMEOUT")
    "${wrap[@]}" qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nodefaults -display none -no-reboot \
        -serial "file:$con" -kernel "$KERNEL" -initrd "$INITRD" \
        -append "console=ttyS0 quiet panic=-1 $args" \
        -device virtio-blk-pci,drive=disk0 "$@" 3>&-
}

# last_ack: the last record the guest acknowledged (a line is whole once
# its \r is out: the console writes \r\n)
last_ack() {
    awk '/^ACK [0-9]+\r$/ { n = $2 + 0 } END { print n + 0 }' "$CON"
}

# wait_acks_past N SECS: until the guest has acknowledged more than N
wait_acks_past() {
    local n=$(($2 * 10))
    while [ "$(last_ack)" -le "$1" ] && [ $n -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
    [ "$(last_ack)" -gt "$1" ] ||
        { fail "the guest acknowledged nothing past $1 within $2 s: $(tail -n 3 "$CON")"; return 1; }
}

# guest_sane: the guest reported no error and is still running
guest_sane() {
    if grep -aqE '^(ERROR|FULL|GUEST END)|I/O error|blk_update_request' "$CON"; then
        fail "the guest: $(grep -aE '^(ERROR|FULL|GUEST END)|I/O error' "$CON" | head -n 3)"
        return 1
    fi
    running "$(cat "$G/qemu.pid")" || { fail "qemu-system-x86_64 is gone"; return 1; }
}

qmp() {
    "$PY" "$BATS_TEST_DIRNAME/qmp-talk.py" "$Q" "$@" | sed -n 3p
}

# top_is FILE [BACKING]: query-block says the disk's top image is FILE
# (backed by BACKING, or standing alone when BACKING is -)
top_is() {
    local r
    r=$(qmp '{"execute": "query-block"}')
    [ "$(jq -r '.return[] | select(.device == "vda") | .inserted.file' <<<"$r")" = "$1" ] ||
        { fail "the disk's top is not $1: $r"; return 1; }
    [ -z "${2:-}" ] && return 0
    local b
    b=$(jq -r '.return[] | select(.device == "vda") | .inserted.image."backing-filename" // "-"' <<<"$r")
    [ "$b" = "$2" ] || { fail "$1 is backed by $b, not $2"; return 1; }
}

# no_job: query-block-jobs lists none
no_job() {
    local r
    r=$(qmp '{"execute": "query-block-jobs"}')
    [ "$(jq -c .return <<<"$r")" = "[]" ] || { fail "jobs: $r"; return 1; }
}

# step_start: the guest writes for GUEST_SECS seconds (the disk fills up
# between steps); sets A, the last record acknowledged before the step
step_start() {
    sleep "${GUEST_SECS:-4}"
    guest_sane || return 1
    A=$(last_ack)
}

# step_done NAME ACKED: the guest goes on writing after the step; a line
# for the report
step_done() {
    guest_sane || return 1
    wait_acks_past "$2" 30 || return 1
    echo "# $1: done at record $2, the guest now at $(last_ack)" >&3
}

@test "the guest boots on the agent's export and acknowledges records" {
    local a
    a=$(last_ack)
    grep -aq '^START slots=65536' "$CON" || fail "$(head -n 5 "$CON")"
    top_is "$G/disk.qcow2" -
    step_done "boot ($(cat "$G/boot-secs")s to the first records)" "$a"
}

@test "a live snapshot while the guest writes" {
    step_start
    run --separate-stderr "$PROG" snapshot --agent "$Q" vda "$G/snap.qcow2"
    [ "$status" -eq 0 ] || fail "exit $status: $stderr"
    top_is "$G/snap.qcow2" "$G/disk.qcow2"
    step_done snapshot "$A"
}

@test "a mirror of the top (--sync=top) with pivot while the guest writes" {
    step_start
    run --separate-stderr "$PROG" mirror --agent "$Q" --sync=top --wait --pivot vda "$G/m1.qcow2"
    [ "$status" -eq 0 ] || fail "exit $status: $stderr"
    top_is "$G/m1.qcow2" "$G/disk.qcow2"
    no_job
    step_done mirror "$A"
}

@test "an active commit with pivot while the guest writes" {
    step_start
    run --separate-stderr "$PROG" commit --agent "$Q" --active --wait --pivot vda
    [ "$status" -eq 0 ] || fail "exit $status: $stderr"
    top_is "$G/disk.qcow2" -
    no_job
    step_done "active commit" "$A"
}

# mirror_resumed: the agent was killed in the middle of a mirror of vda
# into m2.qcow2 and restarted from its state file: the disk is back on its
# source and the job is back from its journal, paused, where it got
# (offset > 0); `job resume` goes on with it, then the pivot
mirror_resumed() {
    local r
    r=$(qmp '{"execute": "query-block-jobs"}')
    [ "$(jq -r '.return[0].device' <<<"$r")" = vda ] || fail "no job restored: $r"
    [ "$(jq -r '.return[0].status' <<<"$r")" = paused ] || fail "not paused: $r"
    run --separate-stderr "$PROG" job --agent "$Q" set-speed vda 0
    [ "$status" -eq 0 ] || fail "set-speed: exit $status: $stderr"
    run --separate-stderr "$PROG" job --agent "$Q" resume vda
    [ "$status" -eq 0 ] || fail "job resume: exit $status: $stderr"
    run --separate-stderr "$PROG" pivot --agent "$Q" --wait --timeout 120 vda
    [ "$status" -eq 0 ] || fail "the pivot: exit $status: $stderr"
}

@test "kill -9 of the agent in the middle of a mirror, a restart from its state file, job resume, the pivot" {
    local a r n=300 pid off len
    step_start
    # slow enough to be killed in the middle (the guest has written some
    # tens of MiB by now)
    run --separate-stderr "$PROG" mirror --agent "$Q" --bandwidth 2M vda "$G/m2.qcow2"
    [ "$status" -eq 0 ] || fail "exit $status: $stderr"
    # in the middle: some copied, not all
    while [ $n -gt 0 ]; do
        r=$(qmp '{"execute": "query-block-jobs"}')
        off=$(jq '.return[0].offset // 0' <<<"$r")
        [ "$off" -gt 0 ] && break
        sleep 0.1
        n=$((n - 1))
    done
    sleep 1
    r=$(qmp '{"execute": "query-block-jobs"}')
    off=$(jq '.return[0].offset // 0' <<<"$r")
    len=$(jq '.return[0].len // 0' <<<"$r")
    [ "$off" -gt 0 ] && [ "$off" -lt "$len" ] || fail "not in the middle of the mirror: $r"
    [ "$(jq -r '.return[0].ready' <<<"$r")" = false ] || fail "$r"
    pid=$(cat "$G/agent.pid")
    kill -KILL "$pid"
    n=100
    while running "$pid" && [ $n -gt 0 ]; do sleep 0.05; n=$((n - 1)); done
    ! running "$pid" || fail "the agent outlived kill -9"
    # no server: the guest's requests wait in QEMU's NBD client
    # (reconnect-delay) and nothing more is acknowledged
    sleep 0.3
    a=$(last_ack)
    sleep 1
    [ "$(last_ack)" -eq "$a" ] || fail "records $a..$(last_ack) acknowledged with no server"
    # the state file alone
    rm -f "$G/agent.pid"
    local t0=$SECONDS
    agent_start
    top_is "$G/disk.qcow2" -
    # the guest's NBD client reconnects and the guest goes on
    wait_acks_past "$a" 30
    guest_sane
    echo "# kill -9 at ${off}/${len} bytes of the mirror, record $a; the guest went on" \
        "$((SECONDS - t0))s after the restart" >&3
    mirror_resumed
    top_is "$G/m2.qcow2" -
    no_job
    step_done "the mirror resumed" "$a"
}

@test "a second boot, on the final image through QEMU's own qcow2 driver, finds every acknowledged record intact" {
    local final acked min=${GUEST_MIN:-1000} v contiguous corrupt start
    final=$G/m2.qcow2
    top_is "$final"
    guest_sane
    # the guest dies at once: whatever it acknowledged is on the disk
    server_stop "$G/qemu.pid" KILL
    acked=$(last_ack)
    server_stop "$G/agent.pid"
    [ "$acked" -ge "$min" ] || fail "only $acked records acknowledged (want >= $min)"
    check_ok "$final"
    start=$SECONDS
    BOOT_TIMEOUT=300 run guest_boot "$G/verify.log" mode=verify \
        -blockdev "driver=qcow2,node-name=disk0,read-only=on,file.driver=file,file.filename=$final"
    [ "$status" -eq 0 ] || fail "the second boot: exit $status: $output"
    v=$(grep -a '^VERIFY ' "$G/verify.log" | tr -d '\r')
    [ -n "$v" ] || fail "no verdict: $(tail -n 5 "$G/verify.log")"
    contiguous=$(sed 's/.*contiguous=\([0-9]*\).*/\1/' <<<"$v")
    corrupt=$(grep -a '^CORRUPT ' "$G/verify.log" | tr -d '\r' | awk -v a="$acked" '$2 <= a')
    echo "# $acked records acknowledged; the second boot ($((SECONDS - start))s): $v" >&3
    [ -z "$corrupt" ] || fail "acknowledged records damaged: $corrupt"
    [ "$contiguous" -ge "$acked" ] || fail "record $((contiguous + 1)) is missing, $acked were acknowledged: $v"
    # past the last acknowledged record, at most the one in flight
    [ "$(sed 's/.*valid=\([0-9]*\).*/\1/' <<<"$v")" -le $((acked + 1)) ] || fail "records never written: $v"
}
