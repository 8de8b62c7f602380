#!/usr/bin/env bats
# Live dirty bitmaps (issue 9, sections 5-7) on `blockctl agent`, checked
# against qemu-storage-daemon 7.2 given the same disks and the same
# writes: enabled bitmaps record every guest write (read through the NBD
# export's qemu:dirty-bitmap:NAME context), block-dirty-bitmap-* act on
# the live bitmap with QSD's replies and errors ("[blockctl]" and "[qsd]"
# run one script), persistent bitmaps are stored at shutdown, and a
# bitmap follows its disk across a live snapshot (blockctl's documented
# extension: QSD leaves it on the old top), where a disk's bitmap is the
# union down its chain.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
load ../agent-helpers
bats_require_minimum_version 1.5.0

# The guest's writes: data, zeroes, unaligned, and one across clusters
GUEST_WRITES=('write -P 1 0 4k' 'write -P 2 1M 64k' 'write -z 3M 128k' 'write -P 3 5000k 3k'
    'write -P 4 8188k 8k' 'write -P 5 15M 1M')

# gw URI: the guest writes through URI
gw() {
    local c args=()
    for c in "${GUEST_WRITES[@]}"; do args+=(-c "$c"); done
    qemu-io -f raw "${args[@]}" "$1" >/dev/null || { fail "qemu-io through $1 failed"; return 1; }
}

# dirty URI NAME: the dirty extents of the export's qemu:dirty-bitmap:NAME
# context, merged, as [[start,length],...] (nbdinfo's reading)
dirty() {
    nbdinfo --json --map="qemu:dirty-bitmap:$2" "$1" | jq -c '[.[] | select(.type == 1) |
        [.offset, .length]] | reduce .[] as $e ([]; if length > 0 and (.[-1][0] + .[-1][1]) == $e[0]
        then .[-1][1] += $e[1] else . + [$e] end)'
}

# bitmaps NODE: [name, recording, persistent, granularity] of each bitmap of
# NODE (query-named-block-nodes; a disk: its export's node), sorted
bitmaps() {
    local node
    node=$(qmp_ok '{"execute": "query-block-exports"}' | jq -r --arg n "$1" \
        '[.[] | select(.id == $n) | ."node-name"] | .[0] // $n')
    qmp_ok '{"execute": "query-named-block-nodes"}' | jq -c --arg n "$node" '[.[] |
        select(."node-name" == $n) | (."dirty-bitmaps" // [])[] | [.name, .recording,
        .persistent, .granularity]] | sort'
}

# stored IMG: the persistent bitmaps in IMG, as qemu-img info lists them
stored() {
    qemu-img info -U --output=json "$1" | jq -c '[."format-specific".data.bitmaps // [] | .[] |
        [.name, .flags, .granularity]] | sort'
}

@test "[blockctl] and [qsd]: bitmaps record the same guest writes; the meta context reads the same; stored at shutdown" {
    requires_qsd
    requires_cmd nbdinfo qemu-nbd
    mkq vm/base.qcow2 16M
    qemu-img bitmap --add vm/base.qcow2 b0
    qemu-img bitmap --add -g 4096 vm/base.qcow2 fine
    cp vm/base.qcow2 vm/ag.qcow2
    cp vm/base.qcow2 vm/q.qcow2
    local f ours theirs
    daemon_up blockctl "vda=$PWD/vm/ag.qcow2"
    local AQ=$QMP AN=$NBD
    QSD_BITMAPS=b0 daemon_up qsd "vda=$PWD/vm/q.qcow2"
    gw "nbd+unix:///vda?socket=$AN"
    gw "$(disk_uri vda)"
    # and a few thousand random 4k writes, the same on both (one seed)
    if [ -x "$NBD_WRITER" ]; then
        "$NBD_WRITER" "nbd+unix:///vda?socket=$AN" 3000 1 --seed 7 >w1.out || fail "writer: $(cat w1.out)"
        "$NBD_WRITER" "$(disk_uri vda)" 3000 1 --seed 7 >w2.out || fail "writer: $(cat w2.out)"
    fi
    theirs=$(dirty "$(disk_uri vda)" b0)
    ours=$(dirty "nbd+unix:///vda?socket=$AN" b0)
    [ "$theirs" != "[]" ] || fail "QSD's b0 is empty"
    [ "$ours" = "$theirs" ] || fail "b0: blockctl $ours, qsd $theirs"
    # and what both say about the bitmaps (count, granularity, recording)
    theirs=$(qmp_ok '{"execute": "query-named-block-nodes"}' | jq -c '[.[] | select(."node-name" == "vda") |
        ."dirty-bitmaps"[] | del(.busy)] | sort_by(.name)')
    ours=$(QMP=$AQ qmp_ok '{"execute": "query-named-block-nodes"}' | jq -c '[.[] | select(.file | endswith("ag.qcow2")) |
        ."dirty-bitmaps"[] | del(.busy)] | sort_by(.name)')
    [ "$ours" = "$theirs" ] || fail "query-named-block-nodes: blockctl $ours, qsd $theirs"
    # in use while served, stored clean at shutdown, with the same bits
    [ "$(qemu-img info -U --output=json vm/ag.qcow2 | jq -c '[."format-specific".data.bitmaps[].flags]')" = \
        '[["in-use","auto"],["in-use","auto"]]' ] || fail "ag.qcow2: $(stored vm/ag.qcow2)"
    daemon_down
    FLAVOUR=blockctl daemon_down
    [ "$(stored vm/ag.qcow2)" = "$(stored vm/q.qcow2)" ] ||
        fail "stored: blockctl $(stored vm/ag.qcow2), qsd $(stored vm/q.qcow2)"
    for f in ag q; do
        check_ok "vm/$f.qcow2"
        nbd_serve "r$f" -r -f qcow2 -B b0 -B fine "vm/$f.qcow2"
        eval "b0_$f=\$(dirty \"\$NBD_URI\" b0)"
        eval "fine_$f=\$(dirty \"\$NBD_URI\" fine)"
    done
    [ "$b0_ag" = "$b0_q" ] && [ "$b0_ag" != "[]" ] || fail "stored b0: blockctl $b0_ag, qsd $b0_q"
    [ "$fine_ag" = "$fine_q" ] || fail "stored fine: blockctl $fine_ag, qsd $fine_q"
}

# The error script: each line a request and QSD's reply (@D@: the folder).
# "vda" is the disk's top node on both.
bitmap_script() {
    local t=$'\t' a='{"execute": "block-dirty-bitmap-' long
    long=$(printf 'n%.0s' $(seq 1024))
    cat <<EOF
${a}add", "arguments": {"node": "nosuch", "name": "b"}}$t{"error": "Cannot find device='nosuch' nor node-name='nosuch'"}
${a}clear", "arguments": {"node": "nosuch", "name": "b"}}$t{"error": "Node 'nosuch' not found"}
${a}add", "arguments": {"node": "vda", "name": ""}}$t{"error": "Bitmap name cannot be empty"}
${a}add", "arguments": {"node": "vda", "name": "$long"}}$t{"error": "Bitmap name too long: $long"}
${a}add", "arguments": {"node": "vda", "name": "$long", "persistent": true}}$t{"error": "Can't make bitmap '$long' persistent in 'vda': Name length exceeds maximum (1023 characters)"}
${a}add", "arguments": {"node": "vda", "name": "g", "granularity": 1000}}$t{"error": "Granularity must be power of 2 and at least 512"}
${a}add", "arguments": {"node": "vda", "name": "g", "granularity": 4294967296}}$t{"error": "Parameter 'granularity' expects uint32_t"}
${a}add", "arguments": {"node": "vda", "name": "b1", "persistent": true}}$t{"return": {}}
${a}add", "arguments": {"node": "vda", "name": "b1"}}$t{"error": "Bitmap already exists: b1"}
${a}add", "arguments": {"node": "vda", "name": "p2", "persistent": true, "granularity": 65536, "disabled": true}}$t{"return": {}}
${a}remove", "arguments": {"node": "vda", "name": "zz"}}$t{"error": "Dirty bitmap 'zz' not found"}
${a}enable", "arguments": {"node": "vda", "name": "zz"}}$t{"error": "Dirty bitmap 'zz' not found"}
${a}merge", "arguments": {"node": "vda", "target": "nosuch", "bitmaps": ["b1"]}}$t{"error": "Dirty bitmap 'nosuch' not found"}
${a}merge", "arguments": {"node": "vda", "target": "b1", "bitmaps": ["zz"]}}$t{"error": "Dirty bitmap 'zz' not found"}
${a}merge", "arguments": {"node": "vda", "target": "b1", "bitmaps": [{"node": "zz", "name": "b1"}]}}$t{"error": "Node 'zz' not found"}
${a}disable", "arguments": {"node": "zz", "name": "b1"}}$t{"error": "Node 'zz' not found"}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "vda", "name": "t1"}}, {"type": "block-dirty-bitmap-add", "data": {"node": "vda", "name": "t2"}}, {"type": "block-dirty-bitmap-add", "data": {"node": "vda", "name": "t1"}}]}}$t{"error": "Bitmap already exists: t1"}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-clear", "data": {"node": "vda", "name": "b1"}}, {"type": "block-dirty-bitmap-enable", "data": {"node": "vda", "name": "p2"}}, {"type": "block-dirty-bitmap-remove", "data": {"node": "vda", "name": "zz"}}]}}$t{"error": "Dirty bitmap 'zz' not found"}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "vda", "name": "a1", "granularity": 4096}}, {"type": "block-dirty-bitmap-merge", "data": {"node": "vda", "target": "a1", "bitmaps": ["b1"]}}, {"type": "block-dirty-bitmap-disable", "data": {"node": "vda", "name": "a1"}}]}}$t{"return": {}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "vda", "name": "x"}}], "properties": {"completion-mode": "grouped"}}}$t{"error": "Action 'block-dirty-bitmap-add' does not support Transaction property completion-mode = grouped"}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "vda", "name": "x"}}, {"type": "abort", "data": {}}]}}$t{"error": "Transaction aborted using Abort action"}
{"execute": "transaction", "arguments": {"actions": []}}$t{"return": {}}
${a}add", "arguments": {"node": "vda", "name": "gone", "persistent": true}}$t{"return": {}}
${a}remove", "arguments": {"node": "vda", "name": "gone"}}$t{"return": {}}
${a}remove", "arguments": {"node": "vda", "name": "gone"}}$t{"error": "Dirty bitmap 'gone' not found"}
EOF
}

bitmap_script_test() {
    mkq vm/vda.qcow2 16M
    daemon_up "$1" "vda=$PWD/vm/vda.qcow2"
    bitmap_script >script
    qmp_script script
    # the failed transactions changed nothing, the good one all
    [ "$(bitmaps vda)" = '[["a1",false,false,4096],["b1",true,true,65536],["p2",false,true,65536]]' ] ||
        fail "$1: bitmaps now $(bitmaps vda)"
    daemon_down
    check_ok vm/vda.qcow2
    [ "$(stored vm/vda.qcow2)" = '[["b1",["auto"],65536],["p2",[],65536]]' ] ||
        fail "$1: stored $(stored vm/vda.qcow2)"
}

@test "[blockctl] block-dirty-bitmap-* replies and errors are QSD's" {
    bitmap_script_test blockctl
}

@test "[qsd] block-dirty-bitmap-* replies and errors (the script's expectations)" {
    requires_qsd
    bitmap_script_test qsd
}

# The CLI's live forms on either daemon: add, write, add --merge, list, dump
cli_test() {
    mkq vm/vda.qcow2 16M
    daemon_up "$1" "vda=$PWD/vm/vda.qcow2"
    run --separate-stderr "$PROG" bitmap --agent "$QMP" --add vda b0
    [ "$status" -eq 0 ] || fail "$1: --add: $stderr"
    gw "$(disk_uri vda)"
    run --separate-stderr "$PROG" bitmap --agent "$QMP" --add --merge b0 vda b1
    [ "$status" -eq 0 ] || fail "$1: --add --merge: $stderr"
    run --separate-stderr "$PROG" bitmap --agent "$QMP" --list --output=json vda
    [ "$status" -eq 0 ] || fail "$1: --list: $stderr"
    [ "$(jq -c '[.[] | [.name, .recording, .persistent]] | sort' <<<"$output")" = \
        '[["b0",true,true],["b1",true,true]]' ] || fail "$1: --list: $output"
    [ "$(jq -c '[.[].count] | unique | length' <<<"$output")" = 1 ] &&
        [ "$(jq '.[0].count' <<<"$output")" -gt 0 ] || fail "$1: counts differ: $output"
    run --separate-stderr "$PROG" info --agent "$QMP" --output=json vda
    [ "$status" -eq 0 ] || fail "$1: info: $stderr"
    [ "$(jq -r .filename <<<"$output")" = "$PWD/vm/vda.qcow2" ] || fail "$1: info: $output"
    # an unknown disk is named
    run --separate-stderr "$PROG" bitmap --agent "$QMP" --add nosuch b2
    [ "$status" -eq 1 ] || fail "$1: unknown disk: exit $status"
    one_line_error nosuch
}

@test "[blockctl] bitmap --add --merge, --list, --dump and info with --agent" {
    requires_cmd nbdinfo
    cli_test blockctl
    # --dump reads what the meta context reads, for both bitmaps
    local m
    m=$(dirty "$(disk_uri vda)" b1)
    [ "$m" != "[]" ] || fail "b1 is empty"
    run --separate-stderr "$PROG" bitmap --agent "$QMP" --dump --output=json vda b1
    [ "$status" -eq 0 ] || fail "--dump: $stderr"
    [ "$(jq -c '[.[] | [.start, .length]]' <<<"$output")" = "$m" ] || fail "--dump b1: $output, NBD: $m"
    [ "$(dirty "$(disk_uri vda)" b0)" = "$m" ] || fail "b0 and b1 differ"
}

@test "[qsd] bitmap --add --merge, --list and info with --agent on qemu-storage-daemon" {
    requires_qsd
    cli_test qsd
    # b1 holds b0's bits (QSD's own digest of each)
    local s0 s1
    s0=$(qmp_ok '{"execute": "x-debug-block-dirty-bitmap-sha256", "arguments": {"node": "vda", "name": "b0"}}')
    s1=$(qmp_ok '{"execute": "x-debug-block-dirty-bitmap-sha256", "arguments": {"node": "vda", "name": "b1"}}')
    [ -n "$s0" ] && [ "$s0" = "$s1" ] || fail "b0 $s0, b1 $s1"
    # --dump needs the blockctl agent's extension: a clear one-line refusal
    run --separate-stderr "$PROG" bitmap --agent "$QMP" --dump vda b1
    [ "$status" -eq 1 ] || fail "--dump on QSD: exit $status"
    one_line_error "qemu:dirty-bitmap:b1"
}

# per_image: [name, recording, persistent, count] of the bitmaps of
# vda.qcow2, s1 and s2 (a line each) in ./per-node; PER_IMAGE: as expected
per_image() {
    local n nodes
    nodes=$(qmp_ok '{"execute": "query-named-block-nodes"}') || return 1
    for n in vda.qcow2 s1.qcow2 s2.qcow2; do
        jq -c --arg f "$n" '[.[] | select(.file | endswith($f)) | ."dirty-bitmaps"[] |
            [.name, .recording, .persistent, .count]]' <<<"$nodes"
    done >per-node
}
PER_IMAGE='[["b",false,true,131072]]
[["b",false,true,131072]]
[["b",true,true,131072]]'

@test "[blockctl] a bitmap follows its disk across live snapshots; --dump and the meta context read the union" {
    requires_cmd nbdinfo
    mkq vm/vda.qcow2 16M
    daemon_up blockctl "vda=$PWD/vm/vda.qcow2"
    local uri
    uri=$(disk_uri vda)
    run --separate-stderr "$PROG" bitmap --agent "$QMP" --add vda b
    [ "$status" -eq 0 ] || fail "--add: $stderr"
    qemu-io -f raw -c 'write -P 1 0 64k' -c 'write -P 1 4M 4k' "$uri" >/dev/null
    run --separate-stderr "$PROG" snapshot --agent "$QMP" vda new/s1.qcow2
    [ "$status" -eq 0 ] || fail "snapshot: $stderr"
    qemu-io -f raw -c 'write -P 2 1M 64k' -c 'write -P 2 4M 64k' "$uri" >/dev/null
    run --separate-stderr "$PROG" snapshot --agent "$QMP" vda new/s2.qcow2
    [ "$status" -eq 0 ] || fail "snapshot 2: $stderr"
    qemu-io -f raw -c 'write -P 3 8M 128k' "$uri" >/dev/null
    # each old top's b stopped recording; the top's records
    per_image
    [ "$(cat per-node)" = "$PER_IMAGE" ] || fail "per image: $(cat per-node)"
    # the disk's b is the union of the three
    local want='[[0,65536],[1048576,65536],[4194304,65536],[8388608,131072]]'
    run --separate-stderr "$PROG" bitmap --agent "$QMP" --dump --output=json vda b
    [ "$status" -eq 0 ] || fail "--dump: $stderr"
    [ "$(jq -c '[.[] | [.start, .length]]' <<<"$output")" = "$want" ] || fail "--dump: $output"
    [ "$(dirty "$uri" b)" = "$want" ] || fail "the meta context reads $(dirty "$uri" b)"
    # stored at the stop; offline, mirror --sync=bitmap copies the union
    daemon_down
    run --separate-stderr "$PROG" mirror --sync=bitmap --bitmap b -O qcow2 new/s2.qcow2 inc.qcow2
    [ "$status" -eq 0 ] || fail "mirror --sync=bitmap: $stderr"
    [ "$(qemu-img map --output=json inc.qcow2 | jq -c '[.[] | select(.data) | [.start, .length]]')" = "$want" ] ||
        fail "the incremental copy holds $(qemu-img map --output=json inc.qcow2)"
    # restarted from its state file, the agent is on s2 with the bitmaps
    daemon_up blockctl "vda=$PWD/vm/vda.qcow2"
    [ "$("$PROG" info --agent "$QMP" --output=json vda | jq -r .filename)" = "$PWD/new/s2.qcow2" ] ||
        fail "restarted on $("$PROG" info --agent "$QMP" --output=json vda | jq -r .filename)"
    # the old tops' bitmaps (read-only images: read when asked) are listed
    # as they were stored
    per_image
    [ "$(cat per-node)" = "$PER_IMAGE" ] || fail "per image after the restart: $(cat per-node)"
    [ "$(dirty "$uri" b)" = "$want" ] || fail "after the restart: $(dirty "$uri" b)"
    # clearing the disk's b clears it down the chain
    run --separate-stderr "$PROG" bitmap --agent "$QMP" --clear vda b
    [ "$status" -eq 0 ] || fail "--clear: $stderr"
    [ "$(dirty "$uri" b)" = "[]" ] || fail "after --clear: $(dirty "$uri" b)"
    qemu-io -f raw -c 'write -P 4 2M 4k' "$uri" >/dev/null
    [ "$(dirty "$uri" b)" = "[[2097152,65536]]" ] || fail "after a write: $(dirty "$uri" b)"
    daemon_down
    check_ok vm/vda.qcow2 new/s1.qcow2 new/s2.qcow2
    # stored: recording only in the top, none left in use
    [ "$(stored new/s2.qcow2)" = '[["b",["auto"],65536]]' ] || fail "s2: $(stored new/s2.qcow2)"
    [ "$(stored new/s1.qcow2)" = '[["b",[],65536]]' ] || fail "s1: $(stored new/s1.qcow2)"
    [ "$(stored vm/vda.qcow2)" = '[["b",[],65536]]' ] || fail "vda: $(stored vm/vda.qcow2)"
}

@test "[qsd] a bitmap stays on the old top across a snapshot (bitmap-follow is blockctl's extension)" {
    requires_qsd
    requires_cmd nbdinfo
    mkq vm/vda.qcow2 16M
    daemon_up qsd "vda=$PWD/vm/vda.qcow2"
    qmp_ok '{"execute": "block-dirty-bitmap-add", "arguments": {"node": "vda", "name": "b", "persistent": true}}' >/dev/null
    qemu-io -f raw -c 'write -P 1 0 64k' "$(disk_uri vda)" >/dev/null
    run --separate-stderr "$PROG" snapshot --agent "$QMP" vda new/s1.qcow2
    [ "$status" -eq 0 ] || fail "snapshot: $stderr"
    qemu-io -f raw -c 'write -P 2 1M 64k' "$(disk_uri vda)" >/dev/null
    # the export "vda" is on the overlay now (no bitmap); the node "vda" is
    # the old top, whose b still records (and saw no write since)
    [ "$(bitmaps vda)" = '[]' ] || fail "overlay: $(bitmaps vda)"
    [ "$(qmp_ok '{"execute": "query-named-block-nodes"}' | jq -c '.[] | select(."node-name" == "vda") |
        [."dirty-bitmaps"[] | [.name, .recording]]')" = '[["b",true]]' ] || fail "old top's b"
    [ "$(qmp_ok '{"execute": "query-named-block-nodes"}' | jq '.[] | select(."node-name" == "vda") | ."dirty-bitmaps"[0].count')" = 65536 ] ||
        fail "QSD's b saw the write after the snapshot"
}

# After a kill -9 the persistent bitmaps are left in use; the restarted
# daemon sees them inconsistent: only remove works on them (QEMU's rules)
killed_test() {
    mkq vm/vda.qcow2 16M
    qemu-img bitmap --add vm/vda.qcow2 b0
    qemu-img bitmap --add vm/vda.qcow2 b1
    daemon_up "$1" "vda=$PWD/vm/vda.qcow2"
    gw "$(disk_uri vda)"
    server_stop "$BATS_TEST_TMPDIR/$1.pid" KILL
    [ "$(stored vm/vda.qcow2)" = '[["b0",["in-use","auto"],65536],["b1",["in-use","auto"],65536]]' ] ||
        fail "$1: after kill -9: $(stored vm/vda.qcow2)"
    check_ok vm/vda.qcow2
    daemon_up "$1" "vda=$PWD/vm/vda.qcow2"
    local t=$'\t' a='{"execute": "block-dirty-bitmap-' e='{"error": "Bitmap '"'b0'"' is inconsistent and cannot be used"}'
    cat >script <<EOF
${a}clear", "arguments": {"node": "vda", "name": "b0"}}$t$e
${a}enable", "arguments": {"node": "vda", "name": "b0"}}$t$e
${a}disable", "arguments": {"node": "vda", "name": "b0"}}$t$e
${a}add", "arguments": {"node": "vda", "name": "m"}}$t{"return": {}}
${a}merge", "arguments": {"node": "vda", "target": "b0", "bitmaps": ["m"]}}$t$e
${a}merge", "arguments": {"node": "vda", "target": "m", "bitmaps": ["b0"]}}$t$e
${a}remove", "arguments": {"node": "vda", "name": "b0"}}$t{"return": {}}
EOF
    qmp_script script
    [ "$(qmp_ok '{"execute": "query-named-block-nodes"}' | jq -c '[.[] | (."dirty-bitmaps" // [])[] |
        [.name, .recording, .inconsistent]] | sort')" = '[["b1",false,true],["m",true,null]]' ] ||
        fail "$1: bitmaps: $(qmp_ok '{"execute": "query-named-block-nodes"}' | jq -c '[.[] | ."dirty-bitmaps"]')"
    daemon_down
    # b0 is gone, b1 stays in use (never trusted), m was not persistent
    [ "$(stored vm/vda.qcow2)" = '[["b1",["in-use","auto"],65536]]' ] ||
        fail "$1: stored: $(stored vm/vda.qcow2)"
}

@test "[blockctl] a bitmap left in use by kill -9 is inconsistent after a restart: only remove works" {
    killed_test blockctl
}

@test "[qsd] a bitmap left in use by kill -9 is inconsistent after a restart (the script's expectations)" {
    requires_qsd
    killed_test qsd
}
