#!/usr/bin/env bats
# An NBD server that stops answering (qemu-nbd SIGSTOPped mid-copy, or a
# proxy, tests/data/nbdstall.py, that never forwards a flush or a block
# status request) never hangs blockctl:
# SIGTERM/SIGINT end any wait at once with 143/130, a request without an
# answer for BLOCKCTL_NBD_TIMEOUT seconds is an error naming the URI
# (exit 1), and a server killed while requests wait is an error too.  The
# source is untouched and a local TARGET.part is removed, whichever side
# (target, source, backing file) stalls.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

SIZE=32M

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
    qemu-img create -q -f raw src.raw $SIZE || return 1
    QIO_FMT=raw qio src.raw 'write -P 0x5a 0 12M' 'write -P 0xa5 16M 16M' || return 1
}

setup() {
    requires_qemu
    requires_cmd qemu-nbd
    cd "$BATS_TEST_TMPDIR" || return 1
    cp "$BATS_FILE_TMPDIR/src.raw" src.raw
    cp "$BATS_FILE_TMPDIR/src.raw" saved.raw
    STOPPED=()
}

teardown() {
    local p f
    for p in "${STOPPED[@]}"; do kill -CONT "$p" 2>/dev/null; done
    [ -e release ] || touch release
    # the servers die at once; copy_teardown would wait for init to reap them
    if [ -f .servers ]; then
        while read -r f; do
            p=$(cat "$f" 2>/dev/null) && [ -n "$p" ] && kill -KILL "$p" 2>/dev/null
            rm -f "$f"
        done <.servers
    fi
    copy_teardown
}

# source_unchanged: src.raw reads as it did before the test
source_unchanged() {
    reads_as src.raw saved.raw -f raw -F raw
}

# files: what the test folder holds (but the test's own bookkeeping)
files() {
    ls -A | grep -vxE 'out|err|px\.out|px\.err|release|\..*|.*\.(pid|sock)' | sort | tr '\n' ' '
}

# now_ms: a clock in milliseconds
now_ms() {
    echo $(($(date +%s%N) / 1000000))
}

# stall PIDFILE: once the copy is under way (progress in ./out), SIGSTOP the
# server, and give its requests time to be stuck
stall() {
    local pid
    wait_progress out 20 || return 1
    pid=$(cat "$1") || return 1
    STOPPED+=("$pid")
    kill -STOP "$pid" || return 1
    sleep 0.5
    kill -0 "$BG_PID" 2>/dev/null || fail "the copy ended before the server stalled: $(cat err)"
}

# ends_within PID SECS: wait up to SECS for PID (killed after); sets
# BG_STATUS (124: it had to be killed) and ELAPSED (ms)
ends_within() {
    local t0
    t0=$(now_ms)
    bg_wait "$1" "$2"
    ELAPSED=$(($(now_ms) - t0))
    [ "$BG_STATUS" -ne 124 ] || fail "still running $2 s later; stderr: $(cat err)"
}

# mirror_bg ARGS...: blockctl mirror --progress=json, slowed down so that it
# is mid-copy when the server stalls
mirror_bg() {
    bg_start out err "$PROG" mirror --progress=json --bandwidth 4M "$@"
}

# interrupted_by SIG STATUS: SIG ends the stalled mirror within 2 s with STATUS
interrupted_by() {
    kill -"$1" "$BG_PID"
    ends_within "$BG_PID" 10 || return 1
    [ "$BG_STATUS" -eq "$2" ] || fail "exit $BG_STATUS, expected $2: $(cat err)"
    [ "$ELAPSED" -le 2000 ] || fail "SIG$1 took $ELAPSED ms to stop it"
    grep -q interrupted err || fail "no message: $(cat err)"
}

# timed_out URI: the stalled mirror (BLOCKCTL_NBD_TIMEOUT=2) ended by itself
# in time, exit 1, saying so and naming URI
timed_out() {
    ends_within "$BG_PID" 15 || return 1
    [ "$BG_STATUS" -eq 1 ] || fail "exit $BG_STATUS, expected 1: $(cat err)"
    [ "$ELAPSED" -le 5000 ] || fail "it took $ELAPSED ms after the stall to give up"
    grep -qF "'$1': no reply from the server in 2 s" err || fail "stderr: $(cat err)"
}

# proxy_serve SERVER_SOCKET TYPE: tests/data/nbdstall.py in front of the
# server, stalling each client's first request of command TYPE; sets
# PROXY_URI
proxy_serve() {
    local px n=200
    px=$(sock_path px)
    bg_start px.out px.err python3 -S "$TESTS_DIR/data/nbdstall.py" "$px" "$1" "$2"
    while ! grep -q ready px.out && [ $n -gt 0 ]; do sleep 0.05; n=$((n - 1)); done
    grep -q ready px.out || { fail "the proxy did not start: $(cat px.err)"; return 1; }
    PROXY_URI="nbd+unix:///?socket=$px"
}

# ------------------------------------------------------- a stalled target

@test "stalled NBD target: SIGTERM ends the mirror at once, 143, the source untouched" {
    qemu-img create -q -f qcow2 t.qcow2 $SIZE
    nbd_serve t -f qcow2 t.qcow2
    local before
    before=$(files)
    mirror_bg src.raw "$NBD_URI"
    stall "$NBD_PIDFILE"
    interrupted_by TERM 143
    grep -qF "$NBD_URI" err || fail "the message does not name the target: $(cat err)"
    source_unchanged
    [ "$(files)" = "$before" ] || fail "local files were left: $(files)"
}

@test "stalled NBD target: SIGINT ends the mirror at once, 130" {
    qemu-img create -q -f qcow2 t.qcow2 $SIZE
    nbd_serve t -f qcow2 t.qcow2
    local before
    before=$(files)
    mirror_bg src.raw "$NBD_URI"
    stall "$NBD_PIDFILE"
    interrupted_by INT 130
    source_unchanged
    [ "$(files)" = "$before" ] || fail "local files were left: $(files)"
}

@test "stalled NBD target: no reply within BLOCKCTL_NBD_TIMEOUT is an error naming the URI" {
    qemu-img create -q -f qcow2 t.qcow2 $SIZE
    nbd_serve t -f qcow2 t.qcow2
    local before
    before=$(files)
    BLOCKCTL_NBD_TIMEOUT=2 mirror_bg src.raw "$NBD_URI"
    stall "$NBD_PIDFILE"
    timed_out "$NBD_URI"
    grep -qF "'$NBD_URI' is incomplete" err || fail "stderr: $(cat err)"
    source_unchanged
    [ "$(files)" = "$before" ] || fail "local files were left: $(files)"
}

# ------------------------------------------------------- a stalled source

@test "stalled NBD source: SIGTERM ends the mirror at once, the local TARGET.part removed" {
    nbd_serve s -r -f raw src.raw
    mirror_bg -O qcow2 "$NBD_URI" t.qcow2
    stall "$NBD_PIDFILE"
    interrupted_by TERM 143
    [ ! -e t.qcow2 ] && [ ! -e t.qcow2.part ] || fail "a target was left: $(files)"
    source_unchanged
}

@test "stalled NBD source: no reply within BLOCKCTL_NBD_TIMEOUT is an error, TARGET.part removed" {
    nbd_serve s -r -f raw src.raw
    BLOCKCTL_NBD_TIMEOUT=2 mirror_bg -O qcow2 "$NBD_URI" t.qcow2
    stall "$NBD_PIDFILE"
    timed_out "$NBD_URI"
    [ ! -e t.qcow2 ] && [ ! -e t.qcow2.part ] || fail "a target was left: $(files)"
    source_unchanged
}

@test "stalled NBD backing file: reads through the overlay time out naming the backing URI" {
    nbd_serve s --persistent --shared=4 -r -f raw src.raw
    qemu-img create -q -f qcow2 -b "$NBD_URI" -F raw top.qcow2 $SIZE
    QIO_FMT=qcow2 qio top.qcow2 'write -P 0x77 4M 1M'
    cp top.qcow2 top.saved
    BLOCKCTL_NBD_TIMEOUT=2 mirror_bg -O qcow2 top.qcow2 t.qcow2
    stall "$NBD_PIDFILE"
    timed_out "$NBD_URI"
    [ ! -e t.qcow2 ] && [ ! -e t.qcow2.part ] || fail "a target was left: $(files)"
    cmp top.qcow2 top.saved || fail "the overlay changed"
    source_unchanged
}

# ------------------------------------------------------- the handshake

@test "server stalled before the handshake: timeout naming the URI, or SIGTERM, never a hang" {
    qemu-img create -q -f qcow2 t.qcow2 $SIZE
    nbd_serve t -f qcow2 t.qcow2
    local pid
    pid=$(cat "$NBD_PIDFILE")
    STOPPED+=("$pid")
    kill -STOP "$pid"
    bg_start out err env BLOCKCTL_NBD_TIMEOUT=1 "$PROG" mirror src.raw "$NBD_URI"
    ends_within "$BG_PID" 10
    [ "$BG_STATUS" -eq 1 ] || fail "exit $BG_STATUS: $(cat err)"
    grep -qF "'$NBD_URI': the NBD server did not answer in 1 s" err || fail "stderr: $(cat err)"
    # the same as a source, stopped by SIGTERM
    bg_start out err "$PROG" mirror -O qcow2 "$NBD_URI" t2.qcow2
    sleep 0.5
    interrupted_by TERM 143
    [ ! -e t2.qcow2 ] && [ ! -e t2.qcow2.part ] || fail "a target was left: $(files)"
}

# ------------------------------------------------------- flush, block status

@test "an NBD flush without a reply times out naming the URI, or ends on SIGINT" {
    qemu-img create -q -f raw small.raw 1M
    QIO_FMT=raw qio small.raw 'write -P 0x33 0 1M'
    qemu-img create -q -f qcow2 t.qcow2 1M
    nbd_serve t --persistent --shared=4 -f qcow2 t.qcow2
    proxy_serve "$NBD_SOCK" 3
    bg_start out err env BLOCKCTL_NBD_TIMEOUT=2 "$PROG" mirror small.raw "$PROXY_URI"
    ends_within "$BG_PID" 15
    [ "$BG_STATUS" -eq 1 ] || fail "exit $BG_STATUS: $(cat err)"
    [ "$ELAPSED" -le 6000 ] || fail "it took $ELAPSED ms"
    grep -qF "'$PROXY_URI': no reply from the server in 2 s" err || fail "stderr: $(cat err)"
    # SIGINT stops the same wait at once
    bg_start out err "$PROG" mirror small.raw "$PROXY_URI"
    sleep 1
    interrupted_by INT 130
}

@test "an NBD block status without a reply times out naming the URI" {
    nbd_serve s -r -f raw src.raw
    proxy_serve "$NBD_SOCK" 7
    BLOCKCTL_NBD_TIMEOUT=2 run --separate-stderr timeout -k 5 20 "$PROG" mirror -O raw "$PROXY_URI" t.raw
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    [[ $stderr == *"'$PROXY_URI': no reply from the server in 2 s"* ]] || fail "stderr: $stderr"
    [ ! -e t.raw ] && [ ! -e t.raw.part ] || fail "a target was left: $(files)"
}

@test "a dirty bitmap over NBD without a reply times out naming the URI" {
    qemu-img create -q -f qcow2 d.qcow2 $SIZE
    qemu-img bitmap --add d.qcow2 b
    qio d.qcow2 'write -P 0x66 1M 64k'
    nbd_serve d -r -B b -f qcow2 d.qcow2
    proxy_serve "$NBD_SOCK" 7
    BLOCKCTL_NBD_TIMEOUT=2 run --separate-stderr timeout -k 5 20 "$PROG" mirror --sync=bitmap \
        --bitmap b -O qcow2 "$PROXY_URI" inc.qcow2
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    [[ $stderr == *"'$PROXY_URI': no reply from the server in 2 s"* ]] || fail "stderr: $stderr"
    [ ! -e inc.qcow2 ] && [ ! -e inc.qcow2.part ] || fail "a target was left: $(files)"
}

# ------------------------------------------------------- a server that dies

@test "a stalled NBD target killed while requests wait: a clear error naming the URI" {
    qemu-img create -q -f qcow2 t.qcow2 $SIZE
    nbd_serve t -f qcow2 t.qcow2
    mirror_bg src.raw "$NBD_URI"
    stall "$NBD_PIDFILE"
    kill -KILL "$(cat "$NBD_PIDFILE")"
    ends_within "$BG_PID" 10
    [ "$BG_STATUS" -eq 1 ] || fail "exit $BG_STATUS: $(cat err)"
    [ "$ELAPSED" -le 2000 ] || fail "it took $ELAPSED ms to notice"
    grep -qF "'$NBD_URI': NBD server connection lost" err || fail "stderr: $(cat err)"
    source_unchanged
}
