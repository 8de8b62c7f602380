#!/usr/bin/env bats
# rebase and resize on the command line: usage errors exit 64 (with
# qemu-img's words where it has some), nothing is opened or changed
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup() {
    cd "$BATS_TEST_TMPDIR" || return 1
    truncate -s 1M r.raw
}

# usage ERR_SUBSTRING ARGS...: exit 64, the message on stderr, r.raw unchanged
usage() {
    local want=$1
    shift
    run -64 --separate-stderr "$PROG" "$@"
    [ -z "$output" ] || fail "stdout: $output"
    [[ $stderr == *"$want"* ]] || fail "'$*': $stderr"
    [ "$(stat -c %s r.raw)" = 1048576 ]
}

@test "rebase: bad options and arguments exit 64" {
    usage "invalid option" rebase -z -u r.raw
    usage "Expecting one image file name" rebase -u
    usage "Expecting one image file name" rebase -u r.raw r.raw
    usage "Must specify backing file (-b) or use unsafe mode (-u)" rebase r.raw
    usage "Invalid cache option: foo" rebase -t foo -u r.raw
    usage "Invalid source cache option: bar" rebase -T bar -u r.raw
    usage "--agent goes with -u" rebase --agent /nonexistent -b x -F qcow2 r.raw
    usage "-F does not go with --agent" rebase --agent /nonexistent -u -b x -F qcow2 vda
    usage "requires an argument" rebase -u r.raw -b
}

@test "resize: bad options, sizes and arguments exit 64" {
    usage "invalid option" resize -z r.raw 2M
    usage "Expecting image file name and size" resize r.raw
    usage "Expecting image file name and size" resize r.raw 2M 3M
    usage "Invalid preallocation mode 'foo'" resize --preallocation=foo r.raw 2M
    usage "Parameter 'size' expects a non-negative number below 2^64" resize r.raw 2X
    usage "Parameter 'size' expects a non-negative number below 2^64" resize r.raw +-2M
    usage "--preallocation does not go with --agent" resize --agent /x --preallocation=full vda 2M
}

@test "resize: a negative size is a size, not an option; --help is help" {
    run -1 --separate-stderr "$PROG" resize -f raw r.raw -1k
    [[ $stderr == *"Use the --shrink option"* ]] || fail "$stderr"
    run -0 "$PROG" resize -f raw --shrink -q r.raw -1k
    [ "$(stat -c %s r.raw)" = $((1048576 - 1024)) ]
    run -0 "$PROG" resize --help
    [[ ${lines[0]} == "Usage: blockctl resize [OPTION...] FILE [+|-]SIZE" ]]
}
