#!/usr/bin/env bats
# mirror never writes an image of its SOURCE's own chain: not the source
# itself, not a backing file (which other overlays may share), whatever the
# spelling (./, absolute, a symlink, a hard link, the same NBD URI), and not
# through TARGET.part either. qemu-img convert refuses the same through its
# locks (exit 1). Writing a TARGET whose own chain holds SOURCE is fine.
# snapshot refuses an OVERLAY that is an image of a chain it snapshots.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
    # base.qcow2 <- vm1.qcow2, and base.qcow2 <- vm2.qcow2 (another VM)
    mkq base.qcow2 4M
    qio base.qcow2 'write -P 0x11 0 1M' 'write -P 0x12 3M 64k'
    mkq vm1.qcow2 4M backing_file=base.qcow2,backing_fmt=qcow2
    qio vm1.qcow2 'write -P 0x21 0 64k' 'write -z 3M 64k'
    mkq vm2.qcow2 4M backing_file=base.qcow2,backing_fmt=qcow2
    qio vm2.qcow2 'write -P 0x31 1M 64k'
    to_raw vm1.qcow2 vm1.raw
    to_raw vm2.qcow2 vm2.raw
    cksum base.qcow2 vm1.qcow2 vm2.qcow2 >sums
}

teardown() {
    copy_teardown
}

# untouched: no image of the setup changed, vm2 reads as before
untouched() {
    [ "$(cksum base.qcow2 vm1.qcow2 vm2.qcow2)" = "$(cat sums)" ] || { fail "an image was written"; return 1; }
    reads_as vm2.qcow2 vm2.raw
    reads_as vm1.qcow2 vm1.raw
}

# refused NAME ARGS...: mirror ARGS exits 1 with one line naming NAME and
# vm1.qcow2, and writes nothing
refused() {
    local name=$1
    shift
    run --separate-stderr timeout 60 "$PROG" mirror "$@"
    [ "$status" -eq 1 ] || { fail "mirror $* exited $status: $stderr"; return 1; }
    one_line_error "$name" || return 1
    [[ $stderr == *vm1.qcow2* ]] || { fail "the error does not name the source: $stderr"; return 1; }
    untouched
}

@test "mirror -n into the source's backing file is refused, as qemu-img convert refuses it" {
    run -1 qemu-img convert -n -O qcow2 vm1.qcow2 base.qcow2
    untouched
    refused base.qcow2 -n vm1.qcow2 base.qcow2
    refused base.qcow2 -n -O qcow2 vm1.qcow2 base.qcow2
    refused base.qcow2 -n --sync=top vm1.qcow2 base.qcow2
    refused base.qcow2 -n -U vm1.qcow2 base.qcow2
}

@test "mirror -n into the source's backing file, spelt otherwise, is refused" {
    mkdir sub
    ln -s ../base.qcow2 sub/link.qcow2
    ln base.qcow2 hard.qcow2
    refused ./base.qcow2 -n vm1.qcow2 ./base.qcow2
    refused "$PWD/base.qcow2" -n vm1.qcow2 "$PWD/base.qcow2"
    refused sub/link.qcow2 -n vm1.qcow2 sub/link.qcow2
    refused hard.qcow2 -n vm1.qcow2 hard.qcow2
    refused sub/../base.qcow2 -n vm1.qcow2 sub/../base.qcow2
}

@test "mirror -n onto the source itself is refused, as qemu-img convert refuses it" {
    run -1 qemu-img convert -n -O qcow2 vm1.qcow2 vm1.qcow2
    ln -s vm1.qcow2 self.qcow2
    refused vm1.qcow2 -n vm1.qcow2 vm1.qcow2
    refused ./vm1.qcow2 -n vm1.qcow2 ./vm1.qcow2
    refused self.qcow2 -n vm1.qcow2 self.qcow2
    refused self.qcow2 -n -O qcow2 --sync=top vm1.qcow2 self.qcow2
}

@test "mirror into a middle image of a longer chain is refused" {
    mkq top.qcow2 4M backing_file=vm1.qcow2,backing_fmt=qcow2
    qio top.qcow2 'write -P 0x41 2M 64k'
    cksum top.qcow2 >top.sum
    run --separate-stderr "$PROG" mirror -n top.qcow2 vm1.qcow2
    [ "$status" -eq 1 ] || fail "exited $status: $stderr"
    one_line_error vm1.qcow2
    [[ $stderr == *top.qcow2* ]] || fail "the error does not name the source: $stderr"
    run --separate-stderr "$PROG" mirror -n top.qcow2 base.qcow2
    [ "$status" -eq 1 ] || fail "exited $status: $stderr"
    untouched
    [ "$(cksum top.qcow2)" = "$(cat top.sum)" ] || fail "top.qcow2 changed"
}

@test "a new TARGET whose TARGET.part is the source is refused, and the source survives" {
    cp vm1.qcow2 d.part
    to_raw d.part d.raw
    cksum d.part >d.sum
    run --separate-stderr "$PROG" mirror -O qcow2 d.part d
    [ "$status" -eq 1 ] || fail "exited $status: $stderr"
    one_line_error d.part
    [ "$(cksum d.part)" = "$(cat d.sum)" ] || fail "the source d.part was written"
    reads_as d.part d.raw
    [ ! -e d ] || fail "d was made"
    # and the backing file's .part is refused as well
    cp base.qcow2 b.part
    mkq o.qcow2 4M backing_file=b.part,backing_fmt=qcow2
    cksum b.part >b.sum
    run --separate-stderr "$PROG" mirror -O qcow2 o.qcow2 b
    [ "$status" -eq 1 ] || fail "exited $status: $stderr"
    [ "$(cksum b.part)" = "$(cat b.sum)" ] || fail "b.part was written"
    [ ! -e b ] || fail "b was made"
}

@test "mirror -n into an NBD export that is the source's backing file is refused" {
    requires_cmd qemu-nbd
    qemu-img convert -O raw base.qcow2 braw.raw
    nbd_serve b -t -e 4 -f raw braw.raw
    qemu-img create -q -f qcow2 -b "$NBD_URI" -F raw -u vm1.qcow2 4M
    qio vm1.qcow2 'write -P 0x21 0 64k'
    cksum braw.raw >braw.sum
    run --separate-stderr timeout 60 "$PROG" mirror -n vm1.qcow2 "$NBD_URI"
    [ "$status" -eq 1 ] || fail "exited $status: $stderr"
    one_line_error "$NBD_URI"
    run --separate-stderr timeout 60 "$PROG" mirror -n "$NBD_URI" "$NBD_URI"
    [ "$status" -eq 1 ] || fail "onto itself: exited $status: $stderr"
    server_stop "$NBD_PIDFILE"
    [ "$(cksum braw.raw)" = "$(cat braw.sum)" ] || fail "the export was written"
}

@test "mirror -n into an image whose own chain holds the source is allowed" {
    # ov.qcow2 <- base of nothing: ov's backing file is vm1.qcow2 (the source)
    mkq ov.qcow2 4M backing_file=vm1.qcow2,backing_fmt=qcow2
    qio ov.qcow2 'write -P 0x51 2M 64k'
    run --separate-stderr timeout 60 "$PROG" mirror -n vm1.qcow2 ov.qcow2
    [ "$status" -eq 0 ] || fail "exited $status: $stderr"
    reads_as ov.qcow2 vm1.raw
    check_ok ov.qcow2
    untouched
}

@test "snapshot: an OVERLAY that is an image of a snapshotted chain is refused" {
    ln -s base.qcow2 blink.qcow2
    local args
    for args in "vm1.qcow2 base.qcow2" "vm1.qcow2 ./vm1.qcow2" "vm1.qcow2 blink.qcow2" \
        "vm2.qcow2 new.qcow2 vm1.qcow2 base.qcow2" "vm1.qcow2 new.qcow2 vm2.qcow2 vm1.qcow2"; do
        # shellcheck disable=SC2086
        run --separate-stderr "$PROG" snapshot $args
        [ "$status" -eq 1 ] || fail "snapshot $args exited $status: $stderr"
        [ ! -e new.qcow2 ] || fail "snapshot $args left new.qcow2"
        untouched
    done
}
