#!/usr/bin/env bats
# The command line's live jobs: stream --agent, mirror --agent (--wait,
# --pivot, --finish), pivot (--wait, --timeout), job show/pause/resume/
# set-speed/cancel/wait, against blockctl agent and qemu-storage-daemon
# 7.2 serving the same chain (tests/jobs-helpers.bash).
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
load ../jobs-helpers
bats_require_minimum_version 1.5.0

setup() {
    jobs_setup
}

teardown() {
    copy_teardown
}

@test "stream --agent --wait: the disk's top stands alone, on both servers" {
    local f
    for f in blockctl qsd; do
        rm -f ./*.qcow2 && mkchain && serve $f || return 1
        run --separate-stderr "$PROG" stream --agent "$S" --wait vda
        [ "$status" -eq 0 ] || fail "$f: exit $status: $stderr"
        stop_server
        qemu-img info top.qcow2 | grep -q '^backing file' && fail "$f: still backed"
        qemu-img compare before.raw top.qcow2 || fail "$f: top.qcow2 changed its view"
        check_ok top.qcow2
    done
}

@test "stream --agent --base, then job show/set-speed/wait while it runs" {
    mkchain && serve blockctl
    run --separate-stderr "$PROG" stream --agent "$S" --base base.qcow2 --bandwidth 2M vda
    [ "$status" -eq 0 ] || fail "exit $status: $stderr"
    [ "$output" = "Job 'vda' started" ] || fail "$output"
    run --separate-stderr "$PROG" job --agent "$S" show --output=json vda
    [ "$status" -eq 0 ] || fail "show: $stderr"
    [ "$(jq -r .type <<<"$output")" = stream ] || fail "$output"
    [ "$(jq -r .speed <<<"$output")" = 2097152 ] || fail "$output"
    run --separate-stderr "$PROG" job --agent "$S" wait vda
    [ "$status" -eq 0 ] || fail "wait: $status $stderr"
    stop_server
    qemu-img info top.qcow2 | grep -q '^backing file: base.qcow2' || fail "$(qemu-img info top.qcow2)"
    qemu-img compare before.raw top.qcow2
    check_ok top.qcow2
}

@test "mirror --agent --wait --pivot under guest writes: the disk ends on the target with every write, on both servers" {
    local f
    for f in blockctl qsd; do
        local writer
        guest_up $f || return 1
        writer=$BG_PID
        run --separate-stderr "$PROG" mirror --agent "$S" --wait --pivot --progress=json vda t.qcow2
        [ "$status" -eq 0 ] || fail "$f: exit $status: $stderr"
        [ "$(tail -n 1 <<<"$output" | jq -r .done)" -gt 0 ] || fail "$f: $output"
        sleep 0.5
        touch stop
        bg_wait "$writer" 30
        [ "$BG_STATUS" -eq 0 ] || fail "$f: the writer: $(cat w.out w.err)"
        stop_server
        "$PY" "$TOOLS/guest-model.py" expect before.raw model.json expect.raw
        qemu-img compare expect.raw t.qcow2 || fail "$f: t.qcow2 lost a write ($(cat w.out))"
        check_ok t.qcow2
    done
}

@test "mirror --agent, then pivot: not ready is refused, --wait waits, --timeout gives up with 124" {
    mkchain && serve blockctl
    run --separate-stderr "$PROG" mirror --agent "$S" --bandwidth 1M vda t.qcow2
    [ "$status" -eq 0 ] || fail "exit $status: $stderr"
    run --separate-stderr "$PROG" pivot --agent "$S" vda
    [ "$status" -eq 1 ] || fail "not ready: exit $status"
    [[ $stderr == *"job 'vda' is not ready (running)"* ]] || fail "$stderr"
    run --separate-stderr "$PROG" pivot --agent "$S" --wait --timeout 1 vda
    [ "$status" -eq 124 ] || fail "--timeout: exit $status: $stderr"
    run --separate-stderr "$PROG" job --agent "$S" pause vda
    [ "$status" -eq 0 ] || fail "pause: $stderr"
    run --separate-stderr "$PROG" job --agent "$S" resume vda
    [ "$status" -eq 0 ] || fail "resume: $stderr"
    run --separate-stderr "$PROG" job --agent "$S" set-speed vda 0
    [ "$status" -eq 0 ] || fail "set-speed: $stderr"
    run --separate-stderr "$PROG" pivot --agent "$S" --wait --timeout 60 vda
    [ "$status" -eq 0 ] || fail "pivot --wait: exit $status: $stderr"
    [ "$output" = "'vda' pivoted" ] || fail "$output"
    run --separate-stderr "$PROG" pivot --agent "$S" vda
    [ "$status" -eq 1 ] && [[ $stderr == *"no job 'vda'"* ]] || fail "no job: $status $stderr"
    stop_server
    qemu-img compare before.raw t.qcow2
    check_ok t.qcow2
}

@test "mirror --agent --wait --finish: no pivot; job cancel of a running stream waits for its end (--async: not); Ctrl-C cancels a --wait" {
    mkchain && serve blockctl
    run --separate-stderr "$PROG" mirror --agent "$S" --wait --finish vda t.qcow2
    [ "$status" -eq 0 ] || fail "--finish: exit $status: $stderr"
    qemu-img compare -U before.raw t.qcow2
    # the disk is still on top.qcow2: a write through it lands there
    qemu-io -f raw -c 'write -P 0x77 0 4k' "$URI" >/dev/null
    run --separate-stderr "$PROG" stream --agent "$S" --bandwidth 64k vda
    [ "$status" -eq 0 ] || fail "stream: $stderr"
    run --separate-stderr "$PROG" job --agent "$S" cancel vda
    [ "$status" -eq 0 ] || fail "cancel: $stderr"
    # cancel returned once the job had ended: a new one may start at once
    run --separate-stderr "$PROG" job --agent "$S" show vda
    [ "$status" -eq 1 ] && [[ $stderr == *"no job 'vda'"* ]] || fail "after cancel: $status $output $stderr"
    run --separate-stderr "$PROG" stream --agent "$S" --bandwidth 64k vda
    [ "$status" -eq 0 ] || fail "stream again: $stderr"
    run --separate-stderr "$PROG" job --agent "$S" --async cancel vda
    [ "$status" -eq 0 ] || fail "cancel --async: $stderr"
    run --separate-stderr "$PROG" job --agent "$S" wait vda
    [ "$status" -eq 2 ] || [[ $stderr == *"no job 'vda'"* ]] || fail "wait after cancel --async: $status $stderr"
    bg_start s.out s.err "$PROG" stream --agent "$S" --wait --bandwidth 64k vda
    local pid=$BG_PID
    sleep 1
    kill -INT "$pid"
    bg_wait "$pid" 10
    [ "$BG_STATUS" -eq 130 ] || fail "Ctrl-C: exit $BG_STATUS: $(cat s.err)"
    grep -q "interrupted: job 'vda' was cancelled" s.err || fail "$(cat s.err)"
    stop_server
    qemu-img info top.qcow2 | grep -q '^backing file: mid.qcow2'
    qemu-io -f qcow2 -c 'read -P 0x77 0 4k' top.qcow2 >/dev/null
    check_ok top.qcow2 t.qcow2
}

@test "job complete: refused before READY; waits for the pivot, so the disk is on the target when it returns, on both servers" {
    local f
    for f in blockctl qsd; do
        rm -f ./*.qcow2 && mkchain && serve $f || return 1
        run --separate-stderr "$PROG" mirror --agent "$S" --bandwidth 1M vda t.qcow2
        [ "$status" -eq 0 ] || fail "$f: mirror: exit $status: $stderr"
        run --separate-stderr "$PROG" job --agent "$S" complete vda
        [ "$status" -eq 1 ] && [[ $stderr == *"in state 'running' cannot accept command verb 'complete'"* ]] || fail "$f: not ready: $status $stderr"
        run --separate-stderr "$PROG" job --agent "$S" set-speed vda 0
        [ "$status" -eq 0 ] || fail "$f: set-speed: $stderr"
        run --separate-stderr "$PROG" job --agent "$S" wait vda
        [ "$status" -eq 0 ] || fail "$f: wait: exit $status: $stderr"
        run --separate-stderr "$PROG" job --agent "$S" complete vda
        [ "$status" -eq 0 ] || fail "$f: complete: exit $status: $stderr"
        run --separate-stderr "$PROG" job --agent "$S" show vda
        [ "$status" -eq 1 ] && [[ $stderr == *"no job 'vda'"* ]] || fail "$f: after complete: $status $output $stderr"
        # the disk is on t.qcow2: a write through it lands there
        qemu-io -f raw -c 'write -P 0x55 0 4k' "$URI" >/dev/null
        stop_server
        qemu-io -f qcow2 -c 'read -P 0x55 0 4k' t.qcow2 >/dev/null || fail "$f: the write is not on the target"
        qemu-io -f qcow2 -c 'read -P 3 0 4k' top.qcow2 >/dev/null || fail "$f: the write reached the source"
        check_ok t.qcow2 top.qcow2
    done
}

@test "commit --agent: --top below the top, then --active --wait --pivot, on both servers; the top needs --active" {
    local f
    for f in blockctl qsd; do
        rm -f ./*.qcow2 && mkchain && serve $f || return 1
        run --separate-stderr "$PROG" commit --agent "$S" vda
        [ "$status" -eq 1 ] && [[ $stderr == *"add --active"* ]] || fail "$f: $status $stderr"
        run --separate-stderr "$PROG" commit --agent "$S" --top mid.qcow2 --wait vda
        [ "$status" -eq 0 ] || fail "$f: intermediate: exit $status: $stderr"
        run --separate-stderr "$PROG" commit --agent "$S" --active --wait --pivot vda
        [ "$status" -eq 0 ] || fail "$f: active: exit $status: $stderr"
        qemu-io -f raw -c 'write -P 0x42 2M 64k' "$URI" >/dev/null
        stop_server
        qemu-img info top.qcow2 | grep -q '^backing file: base.qcow2' || fail "$f: $(qemu-img info top.qcow2)"
        cp before.raw exp.raw
        QIO_FMT=raw qio exp.raw 'write -P 0x42 2M 64k'
        qemu-img compare exp.raw base.qcow2 || fail "$f: base.qcow2 does not hold the disk"
        check_ok base.qcow2
    done
}
