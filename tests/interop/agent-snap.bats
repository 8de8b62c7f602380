#!/usr/bin/env bats
# Live snapshots (issue 9, sections 5-7): blockdev-snapshot-sync and
# transaction on `blockctl agent` while a guest writes through NBD
# (tests/tools/nbd-writer: every acknowledged write checked afterwards
# against its model, and read back during the run), and the same QMP
# scripts on qemu-storage-daemon 7.2: "[blockctl]" tests run on the agent,
# "[qsd]" ones on QSD with the same disks and the same script, so the
# expected replies are QSD's own.  The agent's documented extensions:
# an existing snapshot-file is refused (QSD overwrites it unless it is
# locked), a failed transaction leaves no overlay file behind (QSD leaves
# the ones it created), a disk name is a device and a node name at once.
# AGENT_FULL=1: longer runs under heavier writes.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
load ../agent-helpers
bats_require_minimum_version 1.5.0

SECS=2
RATE=1500
NSNAP=2
[ -z "${AGENT_FULL:-}" ] || { SECS=20; RATE=4000; NSNAP=8; }

# disks N: vm/vd{a,b,...}.qcow2, 32M, data in the first 4M (qemu-io), and
# their raw views (vm/NAME.base.raw); sets DISKS (NAME=FILE...)
disks() {
    local i name
    DISKS=()
    for ((i = 0; i < $1; i++)); do
        name=vd$(printf "\\x$(printf %x $((97 + i)))")
        mkq "vm/$name.qcow2" 32M || return 1
        qio "vm/$name.qcow2" "write -P $((i + 1)) 0 4M" || return 1
        to_raw "vm/$name.qcow2" "vm/$name.base.raw" || return 1
        DISKS+=("$name=$PWD/vm/$name.qcow2")
    done
}

# top NAME: the disk's top image now (info --agent)
top() {
    "$PROG" info --agent "$QMP" --output=json "$1" | jq -r .filename
}

# snap_one_test FLAVOUR: NSNAP snapshots of one disk while the guest writes
snap_one_test() {
    requires_writer
    disks 1
    daemon_up "$1" "${DISKS[@]}"
    writer_start w "$(disk_uri vda)" "$RATE" "$SECS"
    local k prev=$PWD/vm/vda.qcow2 files=(vm/vda.qcow2) ro=false
    for ((k = 1; k <= NSNAP; k++)); do
        sleep "$(awk -v s="$SECS" -v n="$NSNAP" 'BEGIN { printf "%.2f", s / (n + 1) }')"
        if [ "$k" -eq 2 ]; then
            # a relative overlay name, from another folder
            (cd new && "$PROG" snapshot -q --agent "$QMP" vda s2.qcow2) || fail "snapshot 2 failed"
        else
            run --separate-stderr "$PROG" snapshot --agent "$QMP" vda "new/s$k.qcow2"
            [ "$status" -eq 0 ] || fail "$1: snapshot $k: $stderr"
        fi
        cksum "$prev" >"old$k.sum"
        files+=("new/s$k.qcow2")
        prev=$PWD/new/s$k.qcow2
        ro="$ro,true"
    done
    writer_wait w
    [ "$(top vda)" = "$prev" ] || fail "$1: vda is on $(top vda)"
    if [ "$1" = blockctl ]; then
        # the old tops were reopened read-only, the top is writable
        [ "$(qmp_ok '{"execute": "query-named-block-nodes"}' | jq -c '[.[] | .ro]')" = "[$ro]" ] ||
            fail "read-only: $(qmp_ok '{"execute": "query-named-block-nodes"}' | jq -c '[.[] | [.file, .ro]]')"
    fi
    for ((k = 1; k <= NSNAP; k++)); do
        # the backing name is the old top's as the daemon opened it
        # (absolute here, as offline snapshot writes for absolute names)
        backing_is "${files[$k]}" "$PWD/${files[$((k - 1))]}" qcow2
        # and nothing wrote the old top after the snapshot
        [ "$(cksum "$PWD/${files[$((k - 1))]}")" = "$(cat "old$k.sum")" ] ||
            fail "$1: ${files[$((k - 1))]} changed after the snapshot"
    done
    daemon_down
    check_ok "${files[@]}"
    model_check w "$prev" vm/vda.base.raw
}

@test "[blockctl] live snapshots of one disk under guest writes: no write lost, no stale read, old tops frozen" {
    snap_one_test blockctl
}

@test "[qsd] live snapshots of one disk under guest writes (the same checks)" {
    requires_qsd
    snap_one_test qsd
}

@test "[blockctl] one transaction over four disks under guest writes: all switch, nothing lost" {
    requires_writer
    disks 4
    daemon_up blockctl "${DISKS[@]}"
    local n
    for n in vda vdb vdc vdd; do
        writer_start "$n" "$(disk_uri $n)" $((RATE / 3)) "$SECS"
    done
    sleep 1
    run --separate-stderr "$PROG" snapshot --agent "$QMP" vda new/a.qcow2 vdb new/b.qcow2 \
        vdc new/c.qcow2 vdd new/d.qcow2
    [ "$status" -eq 0 ] || fail "snapshot: $stderr"
    for n in vda vdb vdc vdd; do writer_wait "$n"; done
    [ "$(top vda)" = "$PWD/new/a.qcow2" ] && [ "$(top vdd)" = "$PWD/new/d.qcow2" ] ||
        fail "tops: $(top vda) $(top vdd)"
    # the state file names the new tops (a restart opens them)
    grep -q "new/c.qcow2" agent.state || fail "the state file: $(cat agent.state)"
    daemon_down
    for n in a b c d; do
        check_ok "vm/vd$n.qcow2" "new/$n.qcow2"
        backing_is "new/$n.qcow2" "$PWD/vm/vd$n.qcow2" qcow2
        model_check "vd$n" "new/$n.qcow2" "vm/vd$n.base.raw"
    done
}

# the failing transaction: two good snapshots, then one whose overlay
# cannot be created, then a good one
fail_txn() {
    local acts=() d
    for d in a:new/a b:new/b c:nodir/c d:new/d; do
        acts+=("$(printf '{"type": "blockdev-snapshot-sync", "data": {"node-name": "vd%s", "snapshot-file": "%s/%s.qcow2", "snapshot-node-name": "ov-%s"}}' \
            "${d%%:*}" "$PWD" "${d#*:}" "${d%%:*}")")
    done
    qmp "{\"execute\": \"transaction\", \"arguments\": {\"actions\": [$(IFS=,; echo "${acts[*]}")]}}"
}

# tops: every disk's top image file: the node its export is on, and that
# node's file (query-block-exports, query-named-block-nodes: both have them)
tops() {
    local r
    r=$(qmp '{"execute": "query-block-exports"}' '{"execute": "query-named-block-nodes"}') || return 1
    jq -rs '(.[1].return | map({(."node-name"): .file}) | add) as $f |
        .[0].return | sort_by(.id) | .[] | $f[."node-name"]' <<<"$r"
}

fail_txn_test() {
    requires_writer
    disks 4
    daemon_up "$1" "${DISKS[@]}"
    writer_start w "$(disk_uri vdc)" "$RATE" 2
    tops >tops.before
    [ "$(wc -l <tops.before)" -eq 4 ] || fail "tops: $(cat tops.before)"
    local r
    r=$(fail_txn)
    [ "$(jq -r .error.desc <<<"$r")" = "Could not create '$PWD/nodir/c.qcow2': No such file or directory" ] ||
        fail "$1: $r"
    writer_wait w
    tops >tops.after
    diff tops.before tops.after >&2 || fail "$1: a disk moved"
    # the overlays' node names are free again
    qmp_ok '{"execute": "query-named-block-nodes"}' | jq -e '[.[] | ."node-name" | select(startswith("ov-"))] == []' >/dev/null ||
        fail "$1: an overlay node is left"
    daemon_down
    model_check w vm/vdc.qcow2 vm/vdc.base.raw
    check_ok vm/vda.qcow2 vm/vdb.qcow2 vm/vdc.qcow2 vm/vdd.qcow2
}

@test "[blockctl] a transaction whose third action fails: nothing changes, no file is left" {
    fail_txn_test blockctl
    # (QSD leaves a.qcow2 and b.qcow2: blockctl removes what it made)
    [ -z "$(ls new)" ] || fail "left behind: $(ls new)"
    # and through the CLI: the same, exit 1, one line naming the file
    daemon_up blockctl "${DISKS[@]}"
    run --separate-stderr "$PROG" snapshot --agent "$QMP" vda new/a.qcow2 vdb new/b.qcow2 \
        vdc nodir/c.qcow2 vdd new/d.qcow2
    [ "$status" -eq 1 ] || fail "exit $status"
    one_line_error "nodir/c.qcow2"
    [ -z "$(ls new)" ] || fail "left behind: $(ls new)"
    [ "$(top vda)" = "$PWD/vm/vda.qcow2" ] || fail "vda moved to $(top vda)"
}

@test "[qsd] a transaction whose third action fails: nothing changes" {
    requires_qsd
    fail_txn_test qsd
}

# The error script: each line a request and QSD's reply, @D@ the folder.
# The disk's top node is "vda"; "vdb" is a file the other daemon has open.
snap_script() {
    local t=$'\t' s='{"execute": "blockdev-snapshot-sync", "arguments": '
    cat <<EOF
$s{"node-name": "vda", "snapshot-file": "@D@/new/x.qcow2"}}$t{"error": "New overlay node-name missing"}
$s{"node-name": "vda", "snapshot-file": "@D@/new/x.qcow2", "snapshot-node-name": "vda"}}$t{"error": "New overlay node-name already in use"}
$s{"node-name": "vda", "snapshot-file": "@D@/new/x.qcow2", "snapshot-node-name": "s1", "format": "foo"}}$t{"error": "Unknown file format 'foo'"}
$s{"node-name": "vda", "snapshot-file": "@D@/new/x.qcow2", "snapshot-node-name": "s1", "format": "raw"}}$t{"error": "Backing file not supported for file format 'raw'"}
$s{"node-name": "nosuch", "snapshot-file": "@D@/new/x.qcow2", "snapshot-node-name": "s1"}}$t{"error": "Cannot find device='' nor node-name='nosuch'"}
$s{"snapshot-file": "@D@/new/x.qcow2", "snapshot-node-name": "s1"}}$t{"error": "Cannot find device='' nor node-name=''"}
$s{"node-name": "vda", "snapshot-file": "@D@/nodir/x.qcow2", "snapshot-node-name": "s1"}}$t{"error": "Could not create '@D@/nodir/x.qcow2': No such file or directory"}
$s{"node-name": "vda", "snapshot-file": "@D@/vm/other.qcow2", "snapshot-node-name": "s1"}}$t{"error": "Failed to get \"write\" lock"}
{"execute": "transaction", "arguments": {"actions": [{"type": "blockdev-snapshot-sync", "data": {"node-name": "vda", "snapshot-file": "@D@/new/x.qcow2", "snapshot-node-name": "s1"}}], "properties": {"completion-mode": "grouped"}}}$t{"error": "Action 'blockdev-snapshot-sync' does not support Transaction property completion-mode = grouped"}
$s{"node-name": "vda", "snapshot-file": "@D@/new/ok.qcow2", "snapshot-node-name": "s1"}}$t{"return": {}}
$s{"node-name": "s1", "snapshot-file": "@D@/new/ok2.qcow2", "snapshot-node-name": "s1"}}$t{"error": "New overlay node-name already in use"}
{"execute": "transaction", "arguments": {"actions": [{"type": "blockdev-snapshot-sync", "data": {"node-name": "s1", "snapshot-file": "@D@/new/t.qcow2", "snapshot-node-name": "t1"}}, {"type": "block-dirty-bitmap-add", "data": {"node": "t1", "name": "tb"}}]}}$t{"return": {}}
{"execute": "block-dirty-bitmap-remove", "arguments": {"node": "t1", "name": "tb"}}$t{"return": {}}
EOF
}

# snap_script_test FLAVOUR: the script on FLAVOUR while the other daemon
# holds vm/other.qcow2 (the locked file)
snap_script_test() {
    requires_qsd
    mkq vm/vda.qcow2 16M
    mkq vm/other.qcow2 16M
    local other=qsd
    [ "$1" = blockctl ] || other=blockctl
    daemon_up "$other" "vdb=$PWD/vm/other.qcow2"
    local keep=$QMP
    daemon_up "$1" "vda=$PWD/vm/vda.qcow2"
    snap_script >script
    qmp_script script
    # the ones that worked: vda's export is on the last overlay
    qmp_ok '{"execute": "query-block-exports"}' | jq -e '.[] | select(.id == "vda") | ."node-name" == "t1"' >/dev/null ||
        fail "$1: the export is not on t1: $(qmp_ok '{"execute": "query-block-exports"}')"
    [ -e new/ok.qcow2 ] && [ -e new/t.qcow2 ] || fail "no overlay"
    [ "$1" = qsd ] || [ ! -e new/x.qcow2 ] || fail "$1 left new/x.qcow2"
    : "$keep"
}

@test "[blockctl] blockdev-snapshot-sync errors are QSD's" {
    snap_script_test blockctl
}

@test "[qsd] blockdev-snapshot-sync errors (the script's expectations)" {
    snap_script_test qsd
}

# The CLI on either: snapshot of two disks in one transaction, then info
cli_test() {
    disks 2
    daemon_up "$1" "${DISKS[@]}"
    run --separate-stderr "$PROG" snapshot --agent "$QMP" vda new/a.qcow2 vdb new/b.qcow2
    [ "$status" -eq 0 ] || fail "$1: snapshot: $stderr"
    run --separate-stderr "$PROG" info --agent "$QMP" --output=json vda
    [ "$status" -eq 0 ] || fail "$1: info: $stderr"
    [ "$(jq -r .filename <<<"$output")" = "$PWD/new/a.qcow2" ] || fail "$1: info vda: $output"
    [ "$(jq -r '."full-backing-filename"' <<<"$output")" = "$PWD/vm/vda.qcow2" ] ||
        fail "$1: vda's backing: $output"
    run --separate-stderr "$PROG" info --agent "$QMP" --backing-chain vdb
    [ "$status" -eq 0 ] || fail "$1: info --backing-chain: $stderr"
    [ "$(grep -c '^image:' <<<"$output")" -eq 2 ] || fail "$1: chain: $output"
    # a second snapshot of vda goes on the overlay
    run --separate-stderr "$PROG" snapshot --agent "$QMP" vda new/a2.qcow2
    [ "$status" -eq 0 ] || fail "$1: snapshot 2: $stderr"
    [ "$(top vda)" = "$PWD/new/a2.qcow2" ] || fail "$1: vda is on $(top vda)"
    run --separate-stderr "$PROG" job --agent "$QMP" list
    [ "$status" -eq 0 ] || fail "$1: job list: $stderr"
    # an existing file is refused before anything is sent
    run --separate-stderr "$PROG" snapshot --agent "$QMP" vdb new/a.qcow2
    [ "$status" -eq 1 ] || fail "$1: snapshot onto an existing file: exit $status"
    one_line_error new/a.qcow2
    daemon_down
    check_ok new/a2.qcow2 new/a.qcow2 new/b.qcow2
    reads_as new/a2.qcow2 vm/vda.base.raw
    reads_as new/b.qcow2 vm/vdb.base.raw
}

@test "[blockctl] snapshot, info and job list with --agent" {
    cli_test blockctl
}

@test "[qsd] snapshot, info and job list with --agent on qemu-storage-daemon" {
    requires_qsd
    cli_test qsd
}
