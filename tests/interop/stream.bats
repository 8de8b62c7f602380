#!/usr/bin/env bats
# blockctl stream on chains qemu-io wrote: the result reads as the chain did
# (qemu-img compare with the view taken before), qemu-img check is clean,
# the backing file is BASE (relative stays relative) or none, the images
# below are untouched, zeroes are stored as zeroes and only data from above
# BASE is copied.
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

# streamed KIND [--base BASE]: run stream on c/top.qcow2 and check what
# holds whatever the base
streamed() {
    local kind=$1
    shift
    use_chain "$kind"
    run --separate-stderr "$PROG" stream "$@" c/top.qcow2
    [ "$status" -eq 0 ] || fail "stream $* exited $status: $stderr"
    [ -z "$stderr" ] || fail "stream printed on stderr: $stderr"
    reads_as c/top.qcow2 "$V/top.raw"
    check_ok c/top.qcow2
    zeroes_stored c/top.qcow2 top.map 2097152
}

@test "stream without --base (raw base): TOP stands alone and reads as the chain did" {
    streamed raw
    backing_is c/top.qcow2 '' ''
    unchanged c/l2.qcow2 c/l1.qcow2 c/b/base.raw
    # standalone now: nothing below depth 0
    run -0 qemu-img map --output=json c/top.qcow2
    [ "$(jq '[.[] | select(.depth != 0)] | length' <<<"$output")" -eq 0 ]
}

@test "stream without --base (qcow2 base with compressed and zero clusters)" {
    streamed qcow2
    backing_is c/top.qcow2 '' ''
    unchanged c/l2.qcow2 c/l1.qcow2 c/b/base.qcow2
}

@test "stream --base l1: backing becomes l1.qcow2 (qcow2), only data above l1 is copied" {
    streamed raw --base c/l1.qcow2
    backing_is c/top.qcow2 l1.qcow2 qcow2
    unchanged c/l2.qcow2 c/l1.qcow2 c/b/base.raw
    # top.map depths: 0 top, 1 l2, 2 l1, 3 base
    depth0_within c/top.qcow2 top.map 1 2097152
}

@test "stream --base the raw base in a sub-folder: backing b/base.raw (raw)" {
    streamed raw --base c/b/base.raw
    backing_is c/top.qcow2 b/base.raw raw
    unchanged c/l2.qcow2 c/l1.qcow2 c/b/base.raw
    depth0_within c/top.qcow2 top.map 2 2097152
}

@test "stream --base the qcow2 base, TOP named by an absolute path: backing stays relative" {
    use_chain qcow2
    run --separate-stderr "$PROG" stream --base "$PWD/c/b/base.qcow2" "$PWD/c/top.qcow2"
    [ "$status" -eq 0 ] || fail "stream exited $status: $stderr"
    backing_is c/top.qcow2 b/base.qcow2 qcow2
    reads_as c/top.qcow2 "$V/top.raw"
    check_ok c/top.qcow2
    zeroes_stored c/top.qcow2 top.map 2097152
    depth0_within c/top.qcow2 top.map 2 2097152
    unchanged c/l2.qcow2 c/l1.qcow2 c/b/base.qcow2
}

@test "stream of a middle image (l2, 4k clusters) into the 64k l1 base" {
    use_chain raw
    qemu-img map --output=json c/l2.qcow2 >l2.map
    run --separate-stderr "$PROG" stream --base c/l1.qcow2 c/l2.qcow2
    [ "$status" -eq 0 ] || fail "stream exited $status: $stderr"
    # nothing to pull from above l1: l2 is only re-pointed (it already was)
    backing_is c/l2.qcow2 l1.qcow2 qcow2
    reads_as c/l2.qcow2 "$V/l2.raw"
    reads_as c/top.qcow2 "$V/top.raw"
    check_ok c/l2.qcow2
    unchanged c/top.qcow2 c/l1.qcow2 c/b/base.raw
    # and without a base: l2 gets l1's and the base's data at 4k granularity
    run --separate-stderr "$PROG" stream c/l2.qcow2
    [ "$status" -eq 0 ] || fail "stream exited $status: $stderr"
    backing_is c/l2.qcow2 '' ''
    reads_as c/l2.qcow2 "$V/l2.raw"
    reads_as c/top.qcow2 "$V/top.raw"
    check_ok c/l2.qcow2
    zeroes_stored c/l2.qcow2 l2.map 4096
    unchanged c/top.qcow2 c/l1.qcow2 c/b/base.raw
}

@test "stream gives the same guest view as qemu-img rebase -b BASE" {
    use_chain raw
    cp -r c q
    qemu-img rebase -q -b l1.qcow2 -F qcow2 q/top.qcow2
    run --separate-stderr "$PROG" stream --base c/l1.qcow2 c/top.qcow2
    [ "$status" -eq 0 ] || fail "stream exited $status: $stderr"
    reads_as c/top.qcow2 q/top.qcow2
    # same backing fields as qemu-img wrote
    [ "$(info_field c/top.qcow2 '."backing-filename"')" = "$(info_field q/top.qcow2 '."backing-filename"')" ]
    [ "$(info_field c/top.qcow2 '."backing-filename-format"')" = "$(info_field q/top.qcow2 '."backing-filename-format"')" ]
}

@test "stream --progress=json: JSON lines whose last has done == total" {
    use_chain raw
    run --separate-stderr "$PROG" stream --progress=json c/top.qcow2
    [ "$status" -eq 0 ] || fail "stream exited $status: $stderr"
    [ "${#lines[@]}" -ge 1 ] || fail "no progress lines"
    local l
    for l in "${lines[@]}"; do
        jq -e '(.done | type) == "number" and (.total | type) == "number" and .done <= .total' \
            <<<"$l" >/dev/null || fail "bad progress line: $l"
    done
    jq -e '.done == .total and .total > 0' <<<"${lines[-1]}" >/dev/null ||
        fail "last progress line: ${lines[-1]}"
    reads_as c/top.qcow2 "$V/top.raw"
}

@test "stream of an image without a backing file changes nothing" {
    use_chain raw
    run --separate-stderr "$PROG" stream c/top.qcow2
    [ "$status" -eq 0 ]
    sha256sum c/top.qcow2 >s1
    run --separate-stderr "$PROG" stream c/top.qcow2
    [ "$status" -eq 0 ] || fail "second stream exited $status: $stderr"
    sha256sum -c --quiet s1
}

@test "stream --base that is not in the chain: error naming it, nothing changes" {
    use_chain raw
    qemu-img create -q -f qcow2 other.qcow2 $CHAIN_SIZE
    run --separate-stderr "$PROG" stream --base other.qcow2 c/top.qcow2
    failed_cleanly
    [[ $stderr == *other.qcow2* ]] || fail "error does not name other.qcow2: $stderr"
    unchanged c/top.qcow2 c/l2.qcow2 c/l1.qcow2 c/b/base.raw
    # TOP itself is not a base below TOP
    run --separate-stderr "$PROG" stream --base c/top.qcow2 c/top.qcow2
    failed_cleanly
    unchanged c/top.qcow2
}

@test "stream refuses a TOP that qemu-nbd is serving read-write; TOP unchanged" {
    requires_cmd qemu-nbd
    use_chain raw
    nbd_serve top -f qcow2 c/top.qcow2
    record_sums c/top.qcow2 c/l2.qcow2 c/l1.qcow2 c/b/base.raw
    run --separate-stderr timeout 30 "$PROG" stream c/top.qcow2
    failed_cleanly
    [[ $stderr == *top.qcow2* ]] || fail "error does not name top.qcow2: $stderr"
    same_sums
    server_stop "$NBD_PIDFILE"
    backing_is c/top.qcow2 l2.qcow2 qcow2
    reads_as c/top.qcow2 "$V/top.raw"
}

@test "stream refuses when an image of the chain above BASE is being written" {
    requires_cmd qemu-nbd
    use_chain raw
    # l2 open read-write elsewhere: its contents may change under the copy
    nbd_serve l2 -f qcow2 c/l2.qcow2
    record_sums c/top.qcow2 c/l2.qcow2
    run --separate-stderr timeout 30 "$PROG" stream c/top.qcow2
    failed_cleanly
    same_sums
}
