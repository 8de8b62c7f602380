#!/usr/bin/env bats
# blockctl mirror to and from NBD servers on UNIX sockets: qemu-nbd serving
# a qcow2 target (checked after the server is gone), qemu-nbd -r serving
# the source chain, nbdkit's memory plugin as a target.  The copy reads as
# the chain did, zeroes arrive as zeroes, the source is untouched, and the
# errors name the URI.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    setup_chains raw
}

setup() {
    requires_qemu
    requires_cmd qemu-nbd
    cd "$BATS_TEST_TMPDIR" || return 1
}

teardown() {
    copy_teardown
}

mirrored() {
    run --separate-stderr timeout 60 "$PROG" mirror "$@"
    [ "$status" -eq 0 ] || fail "mirror $* exited $status: $stderr"
    [ -z "$stderr" ] || fail "mirror printed on stderr: $stderr"
}

source_unchanged() {
    unchanged c/top.qcow2 c/l2.qcow2 c/l1.qcow2 "$BASE"
}

@test "mirror into a fresh qcow2 served by qemu-nbd" {
    use_chain raw
    mkq t.qcow2 $CHAIN_SIZE
    nbd_serve t -f qcow2 t.qcow2
    mirrored c/top.qcow2 "$NBD_URI"
    server_stop "$NBD_PIDFILE"
    reads_as t.qcow2 "$V/top.raw"
    check_ok t.qcow2
    zeroes_stored t.qcow2 top.map 65536 "$V/top.raw"
    source_unchanged
}

@test "mirror into a qemu-nbd qcow2 full of other data: zeroes are written as zeroes" {
    use_chain raw
    mkq t.qcow2 $CHAIN_SIZE
    qio t.qcow2 'write -P 0xee 0 32M'
    nbd_serve t -f qcow2 t.qcow2
    mirrored c/top.qcow2 "$NBD_URI"
    server_stop "$NBD_PIDFILE"
    reads_as t.qcow2 "$V/top.raw"
    check_ok t.qcow2
    zeroes_stored t.qcow2 top.map 65536 "$V/top.raw"
    source_unchanged
}

@test "mirror -n into a named export (nbd+unix:///EXPORT?socket=...)" {
    use_chain raw
    mkq t.qcow2 $CHAIN_SIZE
    nbd_serve t -x disk0 -f qcow2 t.qcow2
    mirrored -n c/top.qcow2 "nbd+unix:///disk0?socket=$NBD_SOCK"
    server_stop "$NBD_PIDFILE"
    reads_as t.qcow2 "$V/top.raw"
    check_ok t.qcow2
    source_unchanged
}

@test "mirror into nbdkit's memory plugin: contents and sparseness over NBD" {
    requires_cmd nbdkit
    use_chain raw
    nbdkit_serve mem memory $CHAIN_SIZE
    mirrored c/top.qcow2 "$NBD_URI"
    reads_as "$NBD_URI" "$V/top.raw" -f raw
    # the memory plugin reports what was never written as holes
    zeroes_stored "$NBD_URI" top.map 65536 "$V/top.raw"
    source_unchanged
}

@test "mirror from qemu-nbd -r (the chain served read-only) to a local qcow2" {
    use_chain raw
    nbd_serve src -r -f qcow2 c/top.qcow2
    mirrored -O qcow2 "$NBD_URI" t.qcow2
    reads_as t.qcow2 "$V/top.raw"
    backing_is t.qcow2 '' ''
    check_ok t.qcow2
    zeroes_stored t.qcow2 top.map 65536 "$V/top.raw"
    source_unchanged
    server_stop "$NBD_PIDFILE"
    source_unchanged
}

@test "mirror from qemu-nbd -r to a sparse raw file" {
    use_chain raw
    nbd_serve src -r -x vda -f qcow2 c/top.qcow2
    mirrored -O raw "nbd+unix:///vda?socket=$NBD_SOCK" t.raw
    reads_as t.raw "$V/top.raw" -f raw
    [ "$(info_field t.raw .format)" = raw ]
    zeroes_stored t.raw top.map 4096 "$V/top.raw"
    source_unchanged
}

@test "mirror from qemu-nbd -r into a qemu-nbd target (NBD to NBD)" {
    use_chain raw
    nbd_serve src -r -f qcow2 c/top.qcow2
    local src=$NBD_URI srcpid=$NBD_PIDFILE
    mkq t.qcow2 $CHAIN_SIZE
    qio t.qcow2 'write -P 0xee 0 32M'
    nbd_serve dst -f qcow2 t.qcow2
    mirrored "$src" "$NBD_URI"
    server_stop "$NBD_PIDFILE"
    server_stop "$srcpid"
    reads_as t.qcow2 "$V/top.raw"
    check_ok t.qcow2
    zeroes_stored t.qcow2 top.map 65536 "$V/top.raw"
    source_unchanged
}

@test "mirror into an NBD export of another size is refused, naming the URI" {
    use_chain raw
    mkq t.qcow2 16M
    qio t.qcow2 'write -P 0xee 0 1M'
    record_sums t.qcow2
    nbd_serve t -f qcow2 t.qcow2
    run --separate-stderr timeout 30 "$PROG" mirror c/top.qcow2 "$NBD_URI"
    failed_cleanly
    one_line_error "$NBD_SOCK"
    server_stop "$NBD_PIDFILE"
    same_sums
}

@test "mirror --sync none to an NBD export is refused" {
    use_chain raw
    mkq t.qcow2 $CHAIN_SIZE
    nbd_serve t -f qcow2 t.qcow2
    run --separate-stderr timeout 30 "$PROG" mirror --sync none c/top.qcow2 "$NBD_URI"
    failed_cleanly
}

@test "mirror to a socket nobody listens on fails at once, naming the URI" {
    use_chain raw
    local sock
    sock=$(sock_path none)
    run --separate-stderr timeout 30 "$PROG" mirror c/top.qcow2 "nbd+unix:///?socket=$sock"
    failed_cleanly
    one_line_error "$sock"
    run --separate-stderr timeout 30 "$PROG" mirror "nbd+unix:///?socket=$sock" t.qcow2
    failed_cleanly
    one_line_error "$sock"
    [ ! -e t.qcow2 ] && [ ! -e t.qcow2.part ]
}
