#!/usr/bin/env bats
# blockctl rebase against qemu-img rebase 7.2 as the oracle: the same
# chains rebased by both, the guest view kept (qemu-img compare with the
# image before), qemu-img check clean, the same backing name and format
# recorded, the same errors and exit statuses; and rebase -u --agent
# (change-backing-file) on blockctl's agent and on qemu-storage-daemon.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
load ../agent-helpers
bats_require_minimum_version 1.5.0

# chain: base (4k clusters, data, zero clusters) <- mid (16k clusters,
# data, a compressed cluster, zero clusters, shorter than top) <- top
# (512-byte or 2M clusters, data and zero clusters); other.qcow2 (shorter
# than top, part of base's data) and other.raw (raw, shorter still).
chain() {
    local tcs=${1:-512}
    mkq base.qcow2 8M cluster_size=4096
    qio base.qcow2 'write -P 1 0 3M' 'write -z 5M 1M' 'write -P 7 6M 512k'
    qemu-img create -q -f qcow2 -o cluster_size=16k -b base.qcow2 -F qcow2 mid.qcow2 7M
    qio mid.qcow2 'write -P 2 1M 1M' 'write -c -P 5 4M 64k' 'write -z 2M 64k' 'write -z 6M 64k'
    qemu-img create -q -f qcow2 -o cluster_size="$tcs" -b mid.qcow2 -F qcow2 top.qcow2 10M
    qio top.qcow2 'write -P 3 1536k 100k' 'write -z 0 64k' 'write -P 4 9M 4k'
    mkq other.qcow2 6M
    qio other.qcow2 'write -P 1 0 2M' 'write -P 9 3M 1M'
    truncate -s 5M other.raw
    printf 'raw data' | dd of=other.raw bs=1 seek=65536 conv=notrunc status=none
    to_raw top.qcow2 before.raw
}

# copies DIR: the chain's files copied into DIR (same names, links kept)
copies() {
    mkdir -p "$1"
    cp base.qcow2 mid.qcow2 top.qcow2 other.qcow2 other.raw "$1/"
}

# both ARGS...: rebase a copy with blockctl (b/) and one with qemu-img (q/);
# each keeps the guest view and is clean; both record the same backing
both() {
    copies b
    copies q
    run --separate-stderr "$PROG" rebase "$@" b/top.qcow2
    [ "$status" -eq 0 ] || fail "blockctl rebase $*: $stderr"
    qemu-img rebase -q "$@" q/top.qcow2 || fail "qemu-img rebase $* failed"
    qemu_same before.raw b/top.qcow2 || fail "blockctl: the guest view changed"
    qemu_same before.raw q/top.qcow2 || fail "qemu-img: the guest view changed"
    check_ok b/top.qcow2
    [ "$(info_field b/top.qcow2 '."backing-filename" // ""')" = \
      "$(info_field q/top.qcow2 '."backing-filename" // ""')" ] || fail "backing names differ"
    [ "$(info_field b/top.qcow2 '."backing-filename-format" // ""')" = \
      "$(info_field q/top.qcow2 '."backing-filename-format" // ""')" ] || fail "formats differ"
}

@test "safe rebase onto an image of the chain (512-byte clusters over 16k over 4k): as qemu-img" {
    chain 512
    both -b base.qcow2 -F qcow2
    backing_is b/top.qcow2 base.qcow2 qcow2
}

@test "safe rebase with 2M clusters, compressed and zero clusters below: as qemu-img" {
    chain 2M
    both -b base.qcow2 -F qcow2
}

@test "safe rebase onto an unrelated, shorter qcow2: as qemu-img" {
    chain 64k
    both -b other.qcow2 -F qcow2
    backing_is b/top.qcow2 other.qcow2 qcow2
}

@test "safe rebase onto a raw backing file shorter than the overlay: as qemu-img" {
    chain 4k
    both -b other.raw -F raw
    backing_is b/top.qcow2 other.raw raw
}

@test "safe rebase of a qcow2 whose old backing is raw and shorter, onto a qcow2" {
    chain 64k
    copies b
    qemu-img rebase -u -b other.raw -F raw b/top.qcow2
    to_raw b/top.qcow2 b/before.raw
    run --separate-stderr "$PROG" rebase -b other.qcow2 -F qcow2 b/top.qcow2
    [ "$status" -eq 0 ] || fail "$stderr"
    qemu_same b/before.raw b/top.qcow2
    check_ok b/top.qcow2
}

@test "-b '' flattens: the image becomes standalone and reads the same" {
    chain 512
    both -b ''
    backing_is b/top.qcow2 "" ""
}

@test "rebase onto the image it already has writes nothing" {
    chain 64k
    copies b
    local before
    before=$(qemu-img map --output=json b/top.qcow2)
    "$PROG" rebase -b mid.qcow2 -F qcow2 b/top.qcow2
    [ "$(qemu-img map --output=json b/top.qcow2)" = "$before" ] || fail "the map changed"
    qemu_same before.raw b/top.qcow2
}

@test "-u rewrites only the link (the new file need not exist); -u alone removes it" {
    chain 64k
    copies b
    local sum
    sum=$(qemu-img map --output=json -f qcow2 b/top.qcow2 2>/dev/null | grep -c '"depth": 0')
    run -0 "$PROG" rebase -u -b gone.qcow2 -F qcow2 b/top.qcow2
    backing_is b/top.qcow2 gone.qcow2 qcow2
    run -0 "$PROG" rebase -u -b mid.qcow2 -F qcow2 b/top.qcow2
    qemu_same before.raw b/top.qcow2
    [ "$(qemu-img map --output=json b/top.qcow2 | grep -c '"depth": 0')" = "$sum" ]
    run -0 "$PROG" rebase -u b/top.qcow2
    backing_is b/top.qcow2 "" ""
    check_ok b/top.qcow2
}

@test "relative names are relative to FILE's folder, as qemu-img reads them" {
    chain 64k
    copies sub
    mkdir elsewhere
    cd elsewhere
    run -0 "$PROG" rebase -b base.qcow2 -F qcow2 ../sub/top.qcow2
    cd ..
    backing_is sub/top.qcow2 base.qcow2 qcow2
    qemu_same before.raw sub/top.qcow2
    # a name that exists here but not beside FILE: refused, as qemu-img
    cp other.qcow2 elsewhere/near.qcow2
    cd elsewhere
    run -1 --separate-stderr "$PROG" rebase -b near.qcow2 -F qcow2 ../sub/top.qcow2
    [[ $stderr == *"Could not open new backing file 'near.qcow2': Could not open '../sub/near.qcow2'"* ]] ||
        fail "$stderr"
    run -1 qemu-img rebase -b near.qcow2 -F qcow2 ../sub/top.qcow2
    [[ $output == *"Could not open new backing file 'near.qcow2'"* ]]
}

@test "a missing new backing file: qemu-img's error, exit 1, FILE untouched" {
    chain 64k
    copies b
    local sum
    sum=$(cksum <b/top.qcow2)
    run -1 --separate-stderr "$PROG" rebase -b nonexist.qcow2 -F qcow2 b/top.qcow2
    [[ $stderr == *"Could not open new backing file 'nonexist.qcow2': Could not open 'b/nonexist.qcow2': No such file or directory"* ]] ||
        fail "$stderr"
    [ "$(cksum <b/top.qcow2)" = "$sum" ]
    run -1 qemu-img rebase -b nonexist.qcow2 -F qcow2 b/top.qcow2
}

@test "a backing file without -F: qemu-img's error and exit status, nothing changed" {
    chain 64k
    copies b
    copies q
    run -1 --separate-stderr "$PROG" rebase -b other.qcow2 b/top.qcow2
    [[ $stderr == *"Could not change the backing file to 'other.qcow2': backing format must be specified"* ]] ||
        fail "$stderr"
    run -1 qemu-img rebase -b other.qcow2 q/top.qcow2
    [[ $output == *"backing format must be specified"* ]]
    backing_is b/top.qcow2 mid.qcow2 qcow2
    run -1 --separate-stderr "$PROG" rebase -u -b other.qcow2 b/top.qcow2
    backing_is b/top.qcow2 mid.qcow2 qcow2
}

@test "-F with an unknown format (a usage error) and a format the file is not: refused" {
    chain 64k
    copies b
    local f
    # foo: qemu-img refuses it too (exit 1); vmdk: qemu-img reads it, blockctl does not
    for f in foo vmdk; do
        run -64 --separate-stderr "$PROG" rebase -b other.qcow2 -F $f b/top.qcow2
        [[ $stderr == *"invalid format '$f' for -F (valid: raw, qcow2)"* ]] || fail "$stderr"
        run -64 --separate-stderr "$PROG" rebase -u -b other.qcow2 -F $f b/top.qcow2
        backing_is b/top.qcow2 mid.qcow2 qcow2
    done
    run -1 qemu-img rebase -b other.qcow2 -F foo b/top.qcow2
    [[ $output == *"Invalid format name: 'foo'"* ]]
    run -1 --separate-stderr "$PROG" rebase -b other.raw -F qcow2 b/top.qcow2
    run -1 qemu-img rebase -b other.raw -F qcow2 b/top.qcow2
    backing_is b/top.qcow2 mid.qcow2 qcow2
}

@test "a raw FILE has no backing file to change: exit 1 as qemu-img" {
    truncate -s 1M r.raw
    mkq nb.qcow2 1M
    run -1 --separate-stderr "$PROG" rebase -f raw -u -b nb.qcow2 -F qcow2 r.raw
    [[ $stderr == *"Could not change the backing file to 'nb.qcow2': Operation not supported"* ]] ||
        fail "$stderr"
    run -1 qemu-img rebase -f raw -u -b nb.qcow2 -F qcow2 r.raw
    [[ $output == *"Operation not supported"* ]]
}

@test "a locked FILE is refused; a locked new backing file only without -U" {
    chain 64k
    copies b
    qemu-io -f qcow2 b/top.qcow2 -c 'sleep 20000' &
    local pid=$!
    sleep 0.5
    run -1 --separate-stderr "$PROG" rebase -b base.qcow2 -F qcow2 b/top.qcow2
    [[ $stderr == *'Failed to get "write" lock'* ]] || fail "$stderr"
    run -1 --separate-stderr "$PROG" rebase -U -u -b base.qcow2 -F qcow2 b/top.qcow2
    kill "$pid"
    wait "$pid" || true
    qemu-io -f qcow2 b/other.qcow2 -c 'sleep 20000' &
    pid=$!
    sleep 0.5
    run -1 --separate-stderr "$PROG" rebase -b other.qcow2 -F qcow2 b/top.qcow2
    [[ $stderr == *"Could not open new backing file 'other.qcow2'"*'Failed to get shared "write" lock'* ]] ||
        fail "$stderr"
    run -1 qemu-img rebase -b other.qcow2 -F qcow2 b/top.qcow2
    run --separate-stderr "$PROG" rebase -U -b other.qcow2 -F qcow2 b/top.qcow2
    kill "$pid"
    wait "$pid" || true
    [ "$status" -eq 0 ] || fail "-U: $stderr"
    qemu_same before.raw b/top.qcow2
    check_ok b/top.qcow2
}

@test "a missing old backing file: safe mode fails (exit 1), -u repairs the link" {
    chain 64k
    copies b
    qemu-img rebase -u -b gone.qcow2 -F qcow2 b/top.qcow2
    run -1 --separate-stderr "$PROG" rebase -b base.qcow2 -F qcow2 b/top.qcow2
    [[ $stderr == *gone.qcow2* ]] || fail "$stderr"
    run -1 qemu-img rebase -b base.qcow2 -F qcow2 b/top.qcow2
    run -0 "$PROG" rebase -u -b mid.qcow2 -F qcow2 b/top.qcow2
    qemu_same before.raw b/top.qcow2
}

@test "bitmaps: the writes of a safe rebase are recorded as qemu-img's are" {
    chain 64k
    copies b
    copies q
    qemu-img bitmap --add b/top.qcow2 bm
    qemu-img bitmap --add q/top.qcow2 bm
    run -0 "$PROG" rebase -b base.qcow2 -F qcow2 b/top.qcow2
    qemu-img rebase -b base.qcow2 -F qcow2 q/top.qcow2
    qemu_same before.raw b/top.qcow2
    check_ok b/top.qcow2
    local db dq
    db=$("$PROG" bitmap --dump b/top.qcow2 bm)
    dq=$("$PROG" bitmap --dump q/top.qcow2 bm)
    [ "$db" = "$dq" ] || fail "bitmaps differ: blockctl: $db qemu-img: $dq"
    [ -n "$db" ]
    [ "$(info_field b/top.qcow2 '."format-specific".data.bitmaps')" = \
      "$(info_field q/top.qcow2 '."format-specific".data.bitmaps')" ]
}

@test "-t unsafe, -T and -p are accepted; -q is quiet" {
    chain 64k
    copies b
    run -0 --separate-stderr "$PROG" rebase -q -t unsafe -T none -b base.qcow2 -F qcow2 b/top.qcow2
    [ -z "$output" ] && [ -z "$stderr" ]
    qemu_same before.raw b/top.qcow2
    check_ok b/top.qcow2
    run -0 "$PROG" rebase -p -t writethrough -T writeback -b '' b/top.qcow2
    qemu_same before.raw b/top.qcow2
}

# --agent -u: change-backing-file on the disk's top
agent_rebase_test() {
    mkq vm/base.qcow2 32M
    qio vm/base.qcow2 'write -P 1 0 4M'
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 vm/vda.qcow2
    to_raw vm/vda.qcow2 vda.raw
    daemon_up "$1" "vda=$PWD/vm/vda.qcow2"
    # the base moved while the disk runs: the link follows it
    mv vm/base.qcow2 vm/renamed.qcow2
    run -0 --separate-stderr "$PROG" rebase --agent "$QMP" -u -b renamed.qcow2 vda
    run -64 --separate-stderr "$PROG" rebase --agent "$QMP" -b renamed.qcow2 -F qcow2 vda
    run -1 --separate-stderr "$PROG" rebase --agent "$QMP" -u -b x.qcow2 nodisk
    daemon_down
    # QEMU 7.2 records the image's own format as the backing format
    backing_is vm/vda.qcow2 renamed.qcow2 qcow2
    check_ok vm/vda.qcow2
    qemu_same vda.raw vm/vda.qcow2
}

@test "[blockctl] rebase -u --agent: change-backing-file on the disk's top" {
    agent_rebase_test blockctl
}

@test "[qsd] rebase -u --agent: change-backing-file on qemu-storage-daemon" {
    requires_qsd
    agent_rebase_test qsd
}

@test "change-backing-file: QEMU 7.2's errors on both servers" {
    mkq vm/base.qcow2 32M
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 vm/vda.qcow2
    mkq vm/solo.qcow2 32M
    cat >script <<'EOF'
{"execute":"change-backing-file","arguments":{"device":"nope","image-node-name":"vda","backing-file":"x"}}	{"error":"Cannot find device='nope' nor node-name='nope'"}
{"execute":"change-backing-file","arguments":{"device":"vda","image-node-name":"nope","backing-file":"x"}}	{"error":"Cannot find device='' nor node-name='nope'"}
{"execute":"change-backing-file","arguments":{"device":"vda","image-node-name":"solo","backing-file":"x"}}	{"error":"not allowing backing file change on an image without a backing file"}
{"execute":"change-backing-file","arguments":{"device":"solo","image-node-name":"vda","backing-file":"x"}}	{"error":"'solo' and image file are not in the same chain"}
{"execute":"change-backing-file","arguments":{"device":"vda","image-node-name":"vda"}}	{"error":"Parameter 'backing-file' is missing"}
{"execute":"change-backing-file","arguments":{"device":"vda","image-node-name":"vda","backing-file":"base.qcow2"}}	{"return":{}}
EOF
    local f
    for f in blockctl qsd; do
        [ "$f" = qsd ] && ! command -v qemu-storage-daemon >/dev/null && continue
        daemon_up "$f" "vda=$PWD/vm/vda.qcow2" "solo=$PWD/vm/solo.qcow2"
        qmp_script script
        daemon_down
    done
}
