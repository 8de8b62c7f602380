#!/usr/bin/env bats
# Faults under the journaled offline jobs (issue 11, part 3): the NBD
# server of a mirror's target killed or stalled mid-copy, and a state
# folder that cannot be written.  A clear error; then either a job that
# `job list` shows and `job resume` finishes (with at most what was left
# copied) or `job abort` ends, or, where nothing can be resumed, the
# images as before.  (EIO and ENOSPC at every Nth I/O of source and target
# under stream, commit and mirror are swept by tests/crash/, with the same
# journal oracle.)
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

SIZE=32M

# src.raw: data over most of it (a slowed mirror is mid-copy for seconds),
# a hole in the middle
setup() {
    requires_qemu
    requires_cmd qemu-nbd jq
    cd "$BATS_TEST_TMPDIR" || return 1
    if [ ! -e "$BATS_FILE_TMPDIR/src.raw" ]; then
        qemu-img create -q -f raw "$BATS_FILE_TMPDIR/src.raw" $SIZE &&
            QIO_FMT=raw qio "$BATS_FILE_TMPDIR/src.raw" 'write -P 0x3c 0 14M' \
                'write -P 0xc3 20M 12M' || return 1
    fi
    cp "$BATS_FILE_TMPDIR/src.raw" src.raw
    cp "$BATS_FILE_TMPDIR/src.raw" saved.raw
    export BLOCKCTL_STATE_DIR=$BATS_TEST_TMPDIR/state
    export BLOCKCTL_CHECKPOINT_SECS=0
    STOPPED=()
}

teardown() {
    local p
    for p in "${STOPPED[@]}"; do kill -CONT "$p" 2>/dev/null; done
    copy_teardown
}

# the one journal's id ("" when none)
jid() {
    local f
    for f in "$BLOCKCTL_STATE_DIR"/jobs/*.json; do
        [ -e "$f" ] && basename "$f" .json
    done
}

# mirror_bg ARGS...: a slowed down mirror (mid-copy when the server goes)
mirror_bg() {
    bg_start out err "$PROG" mirror --progress=json --bandwidth 4M --buf-size 1M --requests 1 "$@"
}

# listed_with_source: job list shows one interrupted mirror, the source
# authoritative and as it was; sets ID, COPIED, TOTAL
listed_with_source() {
    run -0 "$PROG" job list --output=json
    [ "$(jq length <<<"$output")" = 1 ] || fail "job list: $output"
    [ "$(jq -r '.[0].type' <<<"$output")" = mirror ]
    [ "$(jq -r '.[0].authoritative' <<<"$output")" = "$PWD/src.raw" ] || fail "job list: $output"
    [ "$(jq -r '.[0].running' <<<"$output")" = false ]
    ID=$(jq -r '.[0].id' <<<"$output")
    COPIED=$(jq -r '.[0].copied // 0' <<<"$output")
    TOTAL=$(jq -r '.[0].total // 0' <<<"$output")
    reads_as src.raw saved.raw -f raw -F raw
}

# resumed: job resume ID exits 0, copying at most what was left, and
# leaves no journal
resumed() {
    run -0 --separate-stderr "$PROG" job resume "$ID"
    if [[ $stderr =~ copied\ ([0-9]+)\ bytes\ from\ offset\ ([0-9]+) ]]; then
        [ "${BASH_REMATCH[2]}" = "$COPIED" ] || fail "resumed at ${BASH_REMATCH[2]}, not $COPIED"
        [ "${BASH_REMATCH[1]}" -le $((TOTAL - COPIED)) ] ||
            fail "copied ${BASH_REMATCH[1]} bytes, more than the $((TOTAL - COPIED)) left"
        echo "# resume: ${BASH_REMATCH[1]} bytes copied of $((TOTAL - COPIED)) left" >&3
    else
        fail "resume did not say what it copied: $stderr"
    fi
    [ -z "$(jid)" ] || fail "a journal is left"
}

# killed_mid_copy: mirror src.raw to a qemu-nbd target, its server killed
# mid-copy: exit 1 naming the URI, the job listed
killed_mid_copy() {
    qemu-img create -q -f qcow2 t.qcow2 $SIZE
    nbd_serve t -f qcow2 t.qcow2
    mirror_bg src.raw "$NBD_URI"
    wait_progress out 20
    sleep 0.3
    kill -KILL "$(cat "$NBD_PIDFILE")"
    bg_wait "$BG_PID" 10
    [ "$BG_STATUS" -eq 1 ] || fail "exit $BG_STATUS: $(cat err)"
    grep -qF "'$NBD_URI'" err || fail "the error does not name the target: $(cat err)"
    grep -qF "blockctl job resume" err || fail "the error does not say how to go on: $(cat err)"
    listed_with_source
    [ "$COPIED" -gt 0 ] || fail "nothing was checkpointed before the kill"
    [ "$COPIED" -lt "$TOTAL" ]
}

@test "NBD target killed mid-mirror: a clear error, the job listed; the server back, job resume finishes it" {
    killed_mid_copy
    # (the same export again, on the same socket)
    nbd_serve t -f qcow2 t.qcow2
    resumed
    server_stop "$NBD_PIDFILE"
    qemu-img check -q t.qcow2
    qemu-img compare -q -f raw -F qcow2 src.raw t.qcow2 || fail "the target is not the source"
}

@test "NBD target killed mid-mirror: job abort says the target is incomplete and the source holds the disk" {
    killed_mid_copy
    run -0 "$PROG" job abort "$ID"
    [[ $output == *"'$NBD_URI' is incomplete"* ]] || fail "abort said: $output"
    [[ $output == *"'$PWD/src.raw' holds the disk"* ]] || fail "abort said: $output"
    [ -z "$(jid)" ]
    reads_as src.raw saved.raw -f raw -F raw
    qemu-img check -q t.qcow2
}

@test "NBD target stalled mid-mirror: a timeout naming the URI; the server going on, job resume finishes it" {
    qemu-img create -q -f qcow2 t.qcow2 $SIZE
    # (-t: it serves the next connection too, once it goes on)
    nbd_serve t -t -f qcow2 t.qcow2
    BLOCKCTL_NBD_TIMEOUT=2 mirror_bg src.raw "$NBD_URI"
    wait_progress out 20
    sleep 0.3
    local pid
    pid=$(cat "$NBD_PIDFILE")
    STOPPED+=("$pid")
    kill -STOP "$pid"
    bg_wait "$BG_PID" 15
    [ "$BG_STATUS" -eq 1 ] || fail "exit $BG_STATUS: $(cat err)"
    grep -qF "'$NBD_URI': no reply from the server in 2 s" err || fail "stderr: $(cat err)"
    listed_with_source
    kill -CONT "$pid"
    resumed
    server_stop "$NBD_PIDFILE"
    qemu-img check -q t.qcow2
    qemu-img compare -q -f raw -F qcow2 src.raw t.qcow2 || fail "the target is not the source"
}

# ------------------------------------------------ an unwritable state folder

@test "a state folder that cannot be written: stream, commit and mirror fail before anything changes" {
    local args sums
    qemu-img create -q -f qcow2 base.qcow2 $SIZE
    qemu-io -f qcow2 -c 'write -P 0x11 0 8M' base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
    qemu-io -f qcow2 -c 'write -P 0x22 4M 8M' mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    qemu-io -f qcow2 -c 'write -P 0x33 6M 1M' top.qcow2 >/dev/null
    qemu-img create -q -f qcow2 tn.qcow2 $SIZE
    if [ "$(id -u)" = 0 ]; then
        # (root writes anywhere: a file where the folder would be)
        touch notadir
        export BLOCKCTL_STATE_DIR=$PWD/notadir/state
    else
        mkdir ro && chmod 0500 ro
        export BLOCKCTL_STATE_DIR=$PWD/ro/state
    fi
    sums=$(cksum ./*.qcow2 src.raw)
    for args in "stream top.qcow2" "stream --base base.qcow2 top.qcow2" "commit top.qcow2" \
        "commit --top mid.qcow2 top.qcow2" "mirror top.qcow2 t.qcow2" "mirror -n top.qcow2 tn.qcow2" \
        "mirror -O raw src.raw t.raw"; do
        # shellcheck disable=SC2086
        run -1 --separate-stderr "$PROG" $args
        one_line_error "cannot keep a job journal in '$BLOCKCTL_STATE_DIR/jobs'"
        [ "$(cksum ./*.qcow2 src.raw)" = "$sums" ] || fail "$args changed an image"
        [ ! -e t.qcow2 ] && [ ! -e t.qcow2.part ] && [ ! -e t.raw ] && [ ! -e t.raw.part ] ||
            fail "$args left a target"
    done
}
