#!/usr/bin/env bats
# The README's nightly incremental backup, done live: the disk is served by
# `blockctl agent` and written through NBD while the nights go by.  Each
# night a live snapshot freezes the top (the bitmap follows the disk into
# the new overlay), the frozen top is copied with mirror -U --sync=bitmap,
# and its bitmap is cleared through the agent, named by its file.  Each
# backup must read exactly as the disk did at its snapshot (qemu-img
# compare), hold only the clusters written since the previous night, and
# the images must stay qemu-img check clean.  Also: the CLI's --agent
# forms take a node name or an image file where they take a disk.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup() {
    requires_qemu
    "$PROG" agent --help >/dev/null 2>&1 || skip "no agent"
    cd "$BATS_TEST_TMPDIR" || return 1
    mkdir vm bk
}

teardown() {
    copy_teardown
}

# agent_up DISK-FILE: blockctl agent serving it as vda; sets S (QMP), URI
agent_up() {
    S=$(sock_path qmp)
    local nbd
    nbd=$(sock_path nbd)
    echo "$BATS_TEST_TMPDIR/agent.pid" >>"$BATS_TEST_TMPDIR/.servers"
    "$PROG" agent --qmp "$S" --nbd "unix:$nbd" --state "$BATS_TEST_TMPDIR/agent.state" \
        --disk "vda=$1" --daemonize --pidfile "$BATS_TEST_TMPDIR/agent.pid" 3>&- ||
        { fail "the agent did not start"; return 1; }
    URI="nbd+unix:///vda?socket=$nbd"
}

# gw CMDS...: the guest writes through the export
gw() {
    local c args=()
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f raw "${args[@]}" "$URI" >/dev/null || { fail "qemu-io $* through the agent failed"; return 1; }
}

# bc ARGS...: blockctl, exit 0 required
bc() {
    run --separate-stderr timeout 60 "$PROG" "$@"
    [ "$status" -eq 0 ] || { fail "blockctl $* exited $status: $stderr"; return 1; }
}

# own IMG: the ranges IMG holds itself, merged, as [[start,end],...]
own() {
    qemu-img map -U --output=json "$1" | jq -c '[.[] | select(.depth == 0 and .present) |
        [.start, .start + .length]] | sort_by(.[0]) | reduce .[] as $r ([];
        if length > 0 and .[-1][1] >= $r[0] then .[-1][1] = ([.[-1][1], $r[1]] | max)
        else . + [$r] end)'
}

# top: the disk's top image now (through the agent)
top() {
    "$PROG" info --agent "$S" --output=json vda | jq -r .filename
}

# night N PREV: the recipe; sets OLD (the frozen top) and INC
night() {
    OLD=$(top)
    bc snapshot --agent "$S" vda "$PWD/vm/vda-$1.qcow2" || return 1
    INC=bk/inc-$1.qcow2
    bc mirror -U --sync=bitmap --bitmap backup -B "$2" -F qcow2 -O qcow2 "$OLD" "$INC" || return 1
    bc bitmap --agent "$S" --clear "$OLD" backup
}

@test "live nightly incremental backups: each reads as the disk at its snapshot, holds only that day's writes" {
    qemu-img create -q -f qcow2 vm/vda.qcow2 32M
    qemu-io -c 'write -P 1 0 8M' vm/vda.qcow2 >/dev/null
    "$PROG" bitmap --add vm/vda.qcow2 backup
    agent_up "$PWD/vm/vda.qcow2"
    gw 'write -P 2 16M 1M'
    # the first night: a full copy of the frozen top
    OLD=$(top)
    bc snapshot --agent "$S" vda "$PWD/vm/vda-0.qcow2"
    bc mirror -U -O qcow2 "$OLD" bk/full.qcow2
    bc bitmap --agent "$S" --clear "$OLD" backup
    qemu-img compare -U bk/full.qcow2 "$OLD" || fail "full backup differs from the frozen top"
    # day 1, night 1
    gw 'write -P 3 64k 64k' 'write -P 4 20M 128k' 'write -z 16M 64k'
    night 1 full.qcow2
    qemu-img compare -U "$INC" "$OLD" || fail "inc-1 differs from the disk at night 1"
    [ "$(own "$INC")" = "[[65536,131072],[16777216,16842752],[20971520,21102592]]" ] ||
        fail "inc-1 holds $(own "$INC")"
    # the guest goes on writing while night 2 runs
    gw 'write -P 5 1M 64k'
    night 2 inc-1.qcow2
    gw 'write -P 6 1M 4k'
    qemu-img compare -U "$INC" "$OLD" || fail "inc-2 differs from the disk at night 2"
    [ "$(own "$INC")" = "[[1048576,1114112]]" ] || fail "inc-2 holds $(own "$INC")"
    # the union is what is left to copy: only the write after night 2
    run --separate-stderr "$PROG" bitmap --agent "$S" --dump --output=json vda backup
    [ "$status" -eq 0 ] || fail "dump: $stderr"
    [ "$(jq -c '[.[] | [.start, .length]]' <<<"$output")" = "[[1048576,65536]]" ] ||
        fail "after night 2 the bitmap holds $output"
    server_stop "$BATS_TEST_TMPDIR/agent.pid"
    qemu_clean vm/vda.qcow2
    qemu_clean vm/vda-0.qcow2
    qemu_clean vm/vda-1.qcow2
    qemu_clean vm/vda-2.qcow2
    for f in bk/*.qcow2; do qemu_clean "$f"; done
    # the restored backup chain reads as the disk did
    qemu-img convert -O raw bk/inc-2.qcow2 r2.raw
    qemu-img convert -O raw vm/vda-1.qcow2 d2.raw
    cmp r2.raw d2.raw || fail "restore of night 2 differs"
}

@test "--agent takes a node name or an image file where it takes a disk; an unknown one is named" {
    qemu-img create -q -f qcow2 vm/vda.qcow2 16M
    "$PROG" bitmap --add vm/vda.qcow2 b
    agent_up "$PWD/vm/vda.qcow2"
    gw 'write -P 1 0 64k'
    bc snapshot --agent "$S" vda "$PWD/vm/s1.qcow2"
    gw 'write -P 2 1M 64k'
    # the old top by file, and by node name (query-named-block-nodes)
    local node
    node=$(/usr/bin/python3 "$BATS_TEST_DIRNAME/qmp-talk.py" "$S" \
        '{"execute":"query-named-block-nodes"}' | jq -r --arg f "$PWD/vm/vda.qcow2" \
        'select(.return) | .return[] | select(.file == $f and .drv == "qcow2") | ."node-name"' | head -n 1)
    [ -n "$node" ] || fail "no node for vda.qcow2"
    bc info --agent "$S" --output=json "$node"
    [ "$(jq -r .filename <<<"$output")" = "$PWD/vm/vda.qcow2" ] || fail "info $node: $output"
    bc bitmap --agent "$S" --dump --output=json vm/vda.qcow2 b
    [ "$(jq -c '[.[] | [.start, .length]]' <<<"$output")" = "[[0,65536]]" ] || fail "old top's b: $output"
    bc bitmap --agent "$S" --dump --output=json vda b
    [ "$(jq -c '[.[] | [.start, .length]]' <<<"$output")" = "[[0,65536],[1048576,65536]]" ] ||
        fail "the disk's b (the union): $output"
    bc bitmap --agent "$S" --clear "$node" b
    bc bitmap --agent "$S" --dump --output=json vda b
    [ "$(jq -c '[.[] | [.start, .length]]' <<<"$output")" = "[[1048576,65536]]" ] ||
        fail "after clearing the old top's b: $output"
    run --separate-stderr "$PROG" bitmap --agent "$S" --list nosuch
    [ "$status" -eq 1 ] || fail "unknown name: exit $status"
    one_line_error nosuch
}
