#!/usr/bin/env bats
# blockctl commit on chains qemu-io wrote: BASE then reads as TOP did, IMAGE
# reads as before, qemu-img check is clean on every image written, the
# re-pointed image records BASE relative and with its format, images below
# BASE (and those not written) keep their checksum, zeroes are stored as
# zeroes in BASE.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    setup_chains raw qcow2
}

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
}

teardown() {
    copy_teardown
}

# committed ARGS...: blockctl commit ARGS..., which must succeed silently
committed() {
    run --separate-stderr "$PROG" commit "$@"
    [ "$status" -eq 0 ] || fail "commit $* exited $status: $stderr"
    [ -z "$stderr" ] || fail "commit printed on stderr: $stderr"
}

# emptied IMG: IMG holds nothing itself any more (as qemu-img commit leaves it)
emptied() {
    local own
    own=$(depth0_extents "$1")
    [ "$own" = "[]" ] || fail "$1 still holds data: $own"
}

@test "commit (default): top into l2; l2 reads as top did, top is emptied, chain reads the same" {
    use_chain raw
    committed c/top.qcow2
    reads_as c/l2.qcow2 "$V/top.raw"
    reads_as c/top.qcow2 "$V/top.raw"
    check_ok c/top.qcow2 c/l2.qcow2
    backing_is c/top.qcow2 l2.qcow2 qcow2
    backing_is c/l2.qcow2 l1.qcow2 qcow2
    emptied c/top.qcow2
    unchanged c/l1.qcow2 c/b/base.raw
    zeroes_stored c/l2.qcow2 top.map 4096
}

@test "commit -d: top keeps its data and is not written at all" {
    use_chain raw
    committed -d c/top.qcow2
    reads_as c/l2.qcow2 "$V/top.raw"
    reads_as c/top.qcow2 "$V/top.raw"
    check_ok c/l2.qcow2
    unchanged c/top.qcow2 c/l1.qcow2 c/b/base.raw
    zeroes_stored c/l2.qcow2 top.map 4096
}

@test "commit gives l2 the same guest view as qemu-img commit" {
    use_chain qcow2
    cp -r c q
    qemu-img commit -q q/top.qcow2
    committed c/top.qcow2
    reads_as c/l2.qcow2 q/l2.qcow2
    reads_as c/top.qcow2 q/top.qcow2
}

@test "commit --top below the top: l2 into l1, top re-pointed at l1.qcow2 (qcow2)" {
    use_chain raw
    local before
    before=$(depth0_extents c/top.qcow2)
    committed --top c/l2.qcow2 c/top.qcow2
    reads_as c/l1.qcow2 "$V/l2.raw"
    reads_as c/top.qcow2 "$V/top.raw"
    backing_is c/top.qcow2 l1.qcow2 qcow2
    backing_is c/l1.qcow2 b/base.raw raw
    check_ok c/top.qcow2 c/l2.qcow2 c/l1.qcow2
    # top's own clusters are not touched, only its header
    [ "$(depth0_extents c/top.qcow2)" = "$before" ] || fail "top's data changed"
    unchanged c/b/base.raw
    qemu-img map --output=json c/l2.qcow2 >l2.map
    zeroes_stored c/l1.qcow2 l2.map 65536
}

@test "commit --base deeper: top and l2 into l1; IMAGE reads the same" {
    use_chain qcow2
    committed --base c/l1.qcow2 c/top.qcow2
    reads_as c/l1.qcow2 "$V/top.raw"
    reads_as c/top.qcow2 "$V/top.raw"
    check_ok c/top.qcow2 c/l2.qcow2 c/l1.qcow2
    backing_is c/l1.qcow2 b/base.qcow2 qcow2
    # top keeps a valid backing link: l1 directly, or l2 (l2 still reads right)
    local b
    b=$(info_field c/top.qcow2 '."backing-filename"')
    [ "$b" = l1.qcow2 ] || [ "$b" = l2.qcow2 ] || fail "top's backing file is '$b'"
    [ "$(info_field c/top.qcow2 '."backing-filename-format"')" = qcow2 ]
    unchanged c/b/base.qcow2
    zeroes_stored c/l1.qcow2 top.map 65536
}

@test "commit --top l2 --base the raw base: data and zeroes land in the raw file" {
    use_chain raw
    qemu-img map --output=json c/l2.qcow2 >l2.map
    committed --top c/l2.qcow2 --base c/b/base.raw c/top.qcow2
    reads_as c/b/base.raw "$V/l2.raw" -f raw
    reads_as c/top.qcow2 "$V/top.raw"
    backing_is c/top.qcow2 b/base.raw raw
    check_ok c/top.qcow2 c/l2.qcow2
    unchanged c/l1.qcow2
    # zeroes are holes in the raw base (qemu-img map of raw: "data": false)
    zeroes_stored c/b/base.raw l2.map 4096
}

@test "commit into a qcow2 base with compressed and zero clusters (whole chain)" {
    use_chain qcow2
    committed --base c/b/base.qcow2 c/top.qcow2
    reads_as c/b/base.qcow2 "$V/top.raw"
    reads_as c/top.qcow2 "$V/top.raw"
    check_ok c/top.qcow2 c/l2.qcow2 c/l1.qcow2 c/b/base.qcow2
    zeroes_stored c/b/base.qcow2 top.map 65536
}

@test "commit with absolute paths: the new backing link stays relative" {
    use_chain raw
    committed --top "$PWD/c/l2.qcow2" "$PWD/c/top.qcow2"
    backing_is c/top.qcow2 l1.qcow2 qcow2
    reads_as c/top.qcow2 "$V/top.raw"
}

@test "commit --base not below TOP: error naming it, nothing changes" {
    use_chain raw
    run --separate-stderr "$PROG" commit --top c/l2.qcow2 --base c/top.qcow2 c/top.qcow2
    failed_cleanly
    [[ $stderr == *top.qcow2* ]] || fail "error does not name top.qcow2: $stderr"
    unchanged c/top.qcow2 c/l2.qcow2 c/l1.qcow2 c/b/base.raw
    run --separate-stderr "$PROG" commit --base "$BATS_TEST_TMPDIR/nothere.qcow2" c/top.qcow2
    failed_cleanly
    unchanged c/top.qcow2 c/l2.qcow2 c/l1.qcow2 c/b/base.raw
}

@test "commit of an image without a backing file fails and changes nothing" {
    use_chain raw
    run --separate-stderr "$PROG" commit c/b/base.raw
    failed_cleanly
    unchanged c/b/base.raw
}

@test "commit into a base smaller than TOP grows the base (as qemu-img commit does)" {
    use_chain raw
    qemu-img resize -q c/top.qcow2 48M
    qio c/top.qcow2 'write -P 0x4f 40M 1M' 'write -P 0x4e 32M 64k'
    to_raw c/top.qcow2 top48.raw
    committed c/top.qcow2
    [ "$(info_field c/l2.qcow2 '."virtual-size"')" -eq $((48 << 20)) ] || fail "l2 was not grown"
    reads_as c/l2.qcow2 top48.raw
    reads_as c/top.qcow2 top48.raw
    check_ok c/top.qcow2 c/l2.qcow2
    unchanged c/l1.qcow2 c/b/base.raw
}

@test "commit refuses a BASE that qemu-nbd is serving read-write; nothing changes" {
    requires_cmd qemu-nbd
    use_chain raw
    nbd_serve l2 -f qcow2 c/l2.qcow2
    record_sums c/top.qcow2 c/l2.qcow2 c/l1.qcow2 c/b/base.raw
    run --separate-stderr timeout 30 "$PROG" commit c/top.qcow2
    failed_cleanly
    [[ $stderr == *l2.qcow2* ]] || fail "error does not name l2.qcow2: $stderr"
    same_sums
}

@test "commit refuses a raw BASE that qemu-nbd is serving read-write" {
    requires_cmd qemu-nbd
    use_chain raw
    nbd_serve base -f raw c/b/base.raw
    record_sums c/top.qcow2 c/l2.qcow2 c/l1.qcow2 c/b/base.raw
    run --separate-stderr timeout 30 "$PROG" commit --base c/b/base.raw c/top.qcow2
    failed_cleanly
    [[ $stderr == *base.raw* ]] || fail "error does not name base.raw: $stderr"
    same_sums
}

@test "commit refuses a TOP (emptied afterwards) that qemu-nbd is serving" {
    requires_cmd qemu-nbd
    use_chain raw
    nbd_serve top -f qcow2 c/top.qcow2
    record_sums c/top.qcow2 c/l2.qcow2
    run --separate-stderr timeout 30 "$PROG" commit c/top.qcow2
    failed_cleanly
    same_sums
}
