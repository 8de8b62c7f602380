#!/usr/bin/env bats
# A new image is renamed into place and its folder synced. When that
# folder sync fails, nobody can tell whether the new name survives a
# crash: the command says what failed (the sync, not the rename), exits 1,
# and leaves a state a retry of the same command completes: a new name is
# taken back, a replaced file (create --force) stays the new image.
# Checked with qemu-img, never against blockctl's own output.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
}

teardown() {
    copy_teardown
}

# sync_error NAME: $stderr is one line about syncing the folder of NAME
# (not a failed rename: the rename happened)
sync_error() {
    one_line_error "$1" || return 1
    [[ $stderr == *sync* ]] || { fail "the error does not say the sync failed: $stderr"; return 1; }
    [[ $stderr != *"cannot rename"* ]] || { fail "a rename that worked is reported as failed: $stderr"; return 1; }
}

# no_temp: no hidden temporary image or .part is left in the folder
no_temp() {
    local left
    left=$(find . -maxdepth 2 \( -name '.blockctl-new.*' -o -name '*.part' \))
    [ -z "$left" ] || { fail "left behind: $left"; return 1; }
}

@test "create: a failed folder sync is reported as such, exits 1, and the same create then succeeds" {
    local f
    for f in qcow2 raw; do
        run --separate-stderr env BLOCKCTL_FAULT=dirsync:1:eio "$PROG" create -q -f $f new.$f 1M
        [ "$status" -eq 1 ] || fail "$f: exited $status: $stderr"
        sync_error new.$f
        no_temp
        # what a script does next: the same command again
        run --separate-stderr "$PROG" create -q -f $f new.$f 1M
        [ "$status" -eq 0 ] || fail "$f: the retry exited $status: $stderr"
        [ "$(qemu-img info --output=json new.$f | jq -r '.format, ."virtual-size"' | xargs)" = "$f 1048576" ] ||
            fail "$f: $(qemu-img info new.$f)"
        check_ok new.$f
        no_temp
    done
}

@test "create: a failed sync in a sub-folder names the file; the folder holds nothing new" {
    mkdir d
    run --separate-stderr env BLOCKCTL_FAULT='dirsync:*:eio' "$PROG" create -q -f qcow2 d/x.qcow2 2M
    [ "$status" -eq 1 ] || fail "exited $status: $stderr"
    sync_error d/x.qcow2
    [ -z "$(ls -A d)" ] || fail "left in d: $(ls -A d)"
    "$PROG" create -q -f qcow2 d/x.qcow2 2M
    check_ok d/x.qcow2
}

@test "create --force: a failed folder sync after the replacement keeps the new image; --force again succeeds" {
    qemu-img create -q -f qcow2 old.qcow2 4M
    qemu-io -c 'write -P 9 0 64k' old.qcow2 >/dev/null
    run --separate-stderr env BLOCKCTL_FAULT=dirsync:1:eio "$PROG" create -q --force -f qcow2 old.qcow2 2M
    [ "$status" -eq 1 ] || fail "exited $status: $stderr"
    sync_error old.qcow2
    no_temp
    # the old image is gone either way: what is there is the new one, whole
    [ "$(qemu-img info --output=json old.qcow2 | jq -r '."virtual-size"')" = 2097152 ] ||
        fail "$(qemu-img info old.qcow2)"
    check_ok old.qcow2
    run --separate-stderr "$PROG" create -q --force -f qcow2 old.qcow2 2M
    [ "$status" -eq 0 ] || fail "the retry exited $status: $stderr"
    check_ok old.qcow2
    no_temp
}

@test "mirror: a failed folder sync of TARGET exits 1 without a TARGET; the same mirror then succeeds" {
    qemu-img create -q -f qcow2 src.qcow2 4M
    qemu-io -c 'write -P 5 64k 1M' src.qcow2 >/dev/null
    cksum src.qcow2 >sum
    run --separate-stderr env BLOCKCTL_FAULT='dirsync:1:eio:t.qcow2' "$PROG" mirror src.qcow2 t.qcow2
    [ "$status" -eq 1 ] || fail "exited $status: $stderr"
    sync_error t.qcow2
    [ ! -e t.qcow2 ] || fail "t.qcow2 was left although mirror failed"
    no_temp
    run --separate-stderr "$PROG" mirror src.qcow2 t.qcow2
    [ "$status" -eq 0 ] || fail "the retry exited $status: $stderr"
    reads_as t.qcow2 src.qcow2
    check_ok t.qcow2
    [ "$(cksum src.qcow2)" = "$(cat sum)" ] || fail "src.qcow2 changed"
}

@test "snapshot: the overlays' folder is synced; when that fails no overlay is kept and the retry succeeds" {
    qemu-img create -q -f qcow2 a.qcow2 4M
    qemu-img create -q -f raw b.raw 2M
    mkdir o
    run --separate-stderr env BLOCKCTL_FAULT='dirsync:*:eio:*b1.qcow2' "$PROG" snapshot -q a.qcow2 o/a1.qcow2 \
        b.raw o/b1.qcow2
    [ "$status" -ne 0 ] || fail "a failed folder sync of o/b1.qcow2 exited 0"
    failed_cleanly
    sync_error o/b1.qcow2
    [ -z "$(ls -A o)" ] || fail "overlays left: $(ls -A o)"
    run --separate-stderr "$PROG" snapshot -q a.qcow2 o/a1.qcow2 b.raw o/b1.qcow2
    [ "$status" -eq 0 ] || fail "the retry exited $status: $stderr"
    backing_is o/a1.qcow2 ../a.qcow2 qcow2
    backing_is o/b1.qcow2 ../b.raw raw
    check_ok o/a1.qcow2 o/b1.qcow2
}

@test "create --force refuses to replace an image of its new backing file's chain (qemu-img makes a loop)" {
    qemu-img create -q -f qcow2 base.qcow2 4M
    qemu-io -c 'write -P 3 0 64k' base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 vm1.qcow2
    ln -s base.qcow2 blink.qcow2
    cksum base.qcow2 >sum
    local t
    for t in base.qcow2 ./base.qcow2 blink.qcow2; do
        run --separate-stderr "$PROG" create -q --force -f qcow2 -b vm1.qcow2 -F qcow2 $t
        [ "$status" -eq 1 ] || fail "$t: exited $status: $stderr"
        one_line_error vm1.qcow2
        [ "$(cksum base.qcow2)" = "$(cat sum)" ] || fail "$t: base.qcow2 was replaced"
        qemu-img info --backing-chain vm1.qcow2 >/dev/null || fail "$t: vm1.qcow2's chain is broken"
    done
    no_temp
}
