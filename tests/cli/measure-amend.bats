#!/usr/bin/env bats
# Command line of measure and amend: usage errors (64, qemu-img's wording
# where it has one), other errors (exit 1), and what each leaves untouched.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
}

@test "measure: unknown option, bad --output, -O without its argument exit 64" {
    run -64 --separate-stderr "$PROG" measure --no-such-option --size 1M
    [ -z "$output" ]
    run -64 --separate-stderr "$PROG" measure --output=xml --size 1M
    [[ $stderr == *--output* ]] || fail "$stderr"
    run -64 --separate-stderr "$PROG" measure --size
    [ -z "$output" ]
}

@test "measure: neither --size nor FILE, both, two files, -l without FILE: qemu-img's messages, exit 64" {
    mkq a.qcow2 1M
    run -64 --separate-stderr "$PROG" measure
    [ "$stderr" = "blockctl: Either --size N or one filename must be specified." ] || fail "$stderr"
    [ -z "$output" ]
    run -64 --separate-stderr "$PROG" measure --size 1M a.qcow2
    [ "$stderr" = "blockctl: --size N cannot be used together with a filename." ] || fail "$stderr"
    run -64 --separate-stderr "$PROG" measure a.qcow2 a.qcow2
    [ "$stderr" = "blockctl: At most one filename argument is allowed." ] || fail "$stderr"
    run -64 --separate-stderr "$PROG" measure -l s1 --size 1M
    [ "$stderr" = "blockctl: --image-opts, -f, and -l require a filename argument." ] || fail "$stderr"
    # not a usage error: the image has no such snapshot
    run -1 --separate-stderr "$PROG" measure -l s1 a.qcow2
    [ "$stderr" = "blockctl: Failed to load snapshot: Can't find snapshot" ] || fail "$stderr"
    run -64 --separate-stderr "$PROG" measure --size 12Q
    [ "$stderr" = "blockctl: invalid image size '12Q': use a number of bytes with an optional suffix k, M, G, T, P or E (at most 8E-1)" ] ||
        fail "$stderr"
}

@test "measure --size: the figures need no file, and a file is only read" {
    run -0 --separate-stderr "$PROG" measure -O qcow2 --size 1G
    [ "$output" = "$(qemu-img measure -O qcow2 --size 1G)" ] || fail "$output"
    [ "${#lines[@]}" -eq 2 ] || fail "$output"
    mkq a.qcow2 1M
    qio a.qcow2 'write -P 1 0 64k'
    cksum a.qcow2 >before
    run -0 "$PROG" measure -O qcow2 a.qcow2
    [ "$(cksum a.qcow2)" = "$(cat before)" ] || fail "measure changed its FILE"
}

@test "amend: no -o, no FILE, two FILEs, an option it cannot change: qemu-img's messages, exit 64, nothing changed" {
    mkq a.qcow2 1M
    cksum a.qcow2 >before
    run -64 --separate-stderr "$PROG" amend a.qcow2
    [ "${stderr_lines[0]}" = "blockctl: Must specify options (-o)" ] || fail "$stderr"
    run -64 --separate-stderr "$PROG" amend -o compat=0.10
    [ "$stderr" = "blockctl: Expecting one image file name" ] || fail "$stderr"
    run -64 --separate-stderr "$PROG" amend -o compat=0.10 a.qcow2 a.qcow2
    [ "$stderr" = "blockctl: Expecting one image file name" ] || fail "$stderr"
    run -64 --separate-stderr "$PROG" amend -o cluster_size=4k a.qcow2
    [[ ${stderr_lines[0]} == "blockctl: Invalid parameter 'cluster_size' (valid: "*compat*")" ]] || fail "$stderr"
    [ "${stderr_lines[1]}" = "This option is only supported for image creation" ] || fail "$stderr"
    [ "$(cksum a.qcow2)" = "$(cat before)" ] || fail "a refused amend changed the image"
    run -64 --separate-stderr "$PROG" amend --no-such-option -o compat=1.1 a.qcow2
}

@test "amend: an image in use by a writer is refused (its lock), and left as it was" {
    requires_cmd qemu-nbd
    mkq a.qcow2 1M
    cksum a.qcow2 >before
    qemu-nbd --fork --persistent -k "$BATS_TEST_TMPDIR/s" --pid-file "$BATS_TEST_TMPDIR/pid" a.qcow2
    run --separate-stderr "$PROG" amend -o refcount_bits=8 a.qcow2
    kill "$(cat "$BATS_TEST_TMPDIR/pid")"
    [ "$status" -eq 1 ] || fail "exited $status: $stderr"
    [[ $stderr == *a.qcow2* ]] || fail "$stderr"
    [ "$(cksum a.qcow2)" = "$(cat before)" ] || fail "the image changed"
}

@test "amend -f qcow2 -o help needs no FILE and lists the options; -o help,compat=1.1 too" {
    run -0 --separate-stderr "$PROG" amend -f qcow2 -o help
    [ "${lines[0]}" = "Amend options for 'qcow2':" ] || fail "$output"
    [[ $output == *"refcount_bits=<num>"* ]] || fail "$output"
    run -0 --separate-stderr "$PROG" amend -f qcow2 -o compat=1.1,help
    [ "${lines[0]}" = "Amend options for 'qcow2':" ] || fail "$output"
}
