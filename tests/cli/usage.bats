#!/usr/bin/env bats
# Command line behaviour: usage errors (64), help and version, missing
# files, check's and compare's exit codes as qemu-img's, create's refusal
# to overwrite, and the multicall names.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
    # the compare fixtures of the reference document
    mkq a.qcow2 1M
    qio a.qcow2 'write -P 1 0 64k'
    cp a.qcow2 b.qcow2
    cp a.qcow2 d.qcow2; qio d.qcow2 'write -P 2 12345 1'
    cp a.qcow2 d2.qcow2; qio d2.qcow2 'write -P 2 0 512'
    cp a.qcow2 m.qcow2; qio m.qcow2 'write -P 2 1000 1'
    cp a.qcow2 z.qcow2; qio z.qcow2 'write -z 128k 64k'
    cp a.qcow2 e.qcow2; qio e.qcow2 'write -P 0 64k 64k'
    mkq big0.qcow2 2M
    qio big0.qcow2 'write -P 1 0 64k' 'write -P 0 1536k 64k'
    mkq bigd.qcow2 2M
    qio bigd.qcow2 'write -P 1 0 64k' 'write -P 3 1100000 10'
    to_raw a.qcow2 a.raw
    qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 o.qcow2
    truncate -s 1M r.raw
}

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
}

@test "no arguments: usage on stderr, exit 64" {
    run -64 --separate-stderr "$PROG"
    [ -z "$output" ]
    [[ $stderr == *Usage* ]]
}

@test "unknown subcommand: exit 64" {
    run -64 --separate-stderr "$PROG" frobnicate
    [[ $stderr == *frobnicate* ]]
    [ -z "$output" ]
}

@test "unknown option: exit 64 for every subcommand" {
    local c
    for c in create info check map compare; do
        run --separate-stderr "$PROG" "$c" --no-such-option x
        [ "$status" -eq 64 ] || fail "$c --no-such-option exited $status"
        [ -n "$stderr" ]
    done
    run -64 "$PROG" --no-such-option
}

@test "missing operands: exit 64" {
    run -64 "$PROG" info
    run -64 "$PROG" map
    run -64 "$PROG" check
    run -64 "$PROG" compare
    run -64 "$PROG" compare "$BATS_FILE_TMPDIR/a.qcow2"
    run -64 "$PROG" create
}

@test "too many operands: exit 64" {
    run -64 "$PROG" info "$BATS_FILE_TMPDIR/a.qcow2" "$BATS_FILE_TMPDIR/b.qcow2"
    run -64 "$PROG" check "$BATS_FILE_TMPDIR/a.qcow2" "$BATS_FILE_TMPDIR/b.qcow2"
    run -64 "$PROG" compare "$BATS_FILE_TMPDIR/a.qcow2" "$BATS_FILE_TMPDIR/b.qcow2" "$BATS_FILE_TMPDIR/d.qcow2"
    run -64 "$PROG" create -f qcow2 x.qcow2 1M 2M
    [ ! -e x.qcow2 ]
}

@test "bad option values: exit 64" {
    run -64 "$PROG" info --output=xml "$BATS_FILE_TMPDIR/a.qcow2"
    run -64 "$PROG" check -r bogus "$BATS_FILE_TMPDIR/a.qcow2"
    run -64 "$PROG" map --output=yaml "$BATS_FILE_TMPDIR/a.qcow2"
}

@test "--help: exit 0, usage on stdout, every subcommand listed" {
    run -0 --separate-stderr "$PROG" --help
    [[ $output == *Usage* ]]
    local c
    for c in create info check map compare; do
        [[ $output == *"  $c "* ]] || fail "$c missing from --help"
    done
    for c in create info check map compare; do
        run -0 --separate-stderr "$PROG" "$c" --help
        [[ $output == *"Usage: blockctl $c"* ]] || fail "$c --help: $output"
    done
}

@test "--version: one line, 'blockctl X.Y.Z', exit 0" {
    run -0 --separate-stderr "$PROG" --version
    [ "${#lines[@]}" -eq 1 ]
    [[ $output =~ ^blockctl\ [0-9]+\.[0-9]+\.[0-9]+$ ]]
}

@test "missing file: info, map and check exit 1, compare exits 2, naming the file" {
    run -1 --separate-stderr "$PROG" info nonexist.qcow2
    [[ $stderr == *nonexist.qcow2* ]]
    [ -z "$output" ]
    run -1 --separate-stderr "$PROG" info --output=json nonexist.qcow2
    [ -z "$output" ]
    run -1 --separate-stderr "$PROG" map nonexist.qcow2
    [[ $stderr == *nonexist.qcow2* ]]
    run -1 --separate-stderr "$PROG" check nonexist.qcow2
    [[ $stderr == *nonexist.qcow2* ]]
    run -2 --separate-stderr "$PROG" compare "$BATS_FILE_TMPDIR/a.qcow2" nonexist.qcow2
    [[ $stderr == *nonexist.qcow2* ]]
    run -2 --separate-stderr "$PROG" compare nonexist.qcow2 "$BATS_FILE_TMPDIR/a.qcow2"
    [[ $stderr == *nonexist.qcow2* ]]
}

@test "create in a missing folder: exit 1, naming the file" {
    run -1 --separate-stderr "$PROG" create -f qcow2 nodir/x.qcow2 1M
    [[ $stderr == *nodir/x.qcow2* ]]
    run -1 --separate-stderr "$PROG" create -f raw nodir/x.raw 1M
}

@test "errors are one line naming the file" {
    run -1 --separate-stderr "$PROG" info nonexist.qcow2
    [ "${#stderr_lines[@]}" -eq 1 ]
    run -1 --separate-stderr "$PROG" info -f qcow2 "$BATS_FILE_TMPDIR/r.raw"
    [ "${#stderr_lines[@]}" -eq 1 ]
    [[ $stderr == *r.raw* ]]
}

@test "check on a raw image exits 63, as qemu-img" {
    run -63 qemu-img check "$BATS_FILE_TMPDIR/r.raw"
    run -63 --separate-stderr "$PROG" check "$BATS_FILE_TMPDIR/r.raw"
    [[ $stderr == *"does not support checks"* ]]
    run -63 "$PROG" check --output=json "$BATS_FILE_TMPDIR/r.raw"
    run -63 "$PROG" check -f raw -r all "$BATS_FILE_TMPDIR/r.raw"
}

@test "info -f with an unknown format exits 64, listing the formats" {
    run -64 --separate-stderr "$PROG" info -f bogus "$BATS_FILE_TMPDIR/a.qcow2"
    [[ $stderr == *"valid: raw, qcow2"* ]]
}

@test "info on a folder exits 1" {
    run -1 --separate-stderr "$PROG" info "$BATS_FILE_TMPDIR"
    [ -n "$stderr" ]
}

@test "a full stdout is an error" {
    [ -w /dev/full ] || skip "no /dev/full"
    run --separate-stderr bash -c '"$1" info "$2" >/dev/full' _ "$PROG" "$BATS_FILE_TMPDIR/a.qcow2"
    [ "$status" -ne 0 ]
    [ -n "$stderr" ]
    run --separate-stderr bash -c '"$1" map --output=json "$2" >/dev/full' _ "$PROG" "$BATS_FILE_TMPDIR/a.qcow2"
    [ "$status" -ne 0 ]
}

# compare: stdout and exit status equal to qemu-img's for the reference
# document's cases
@test "compare: messages and exit codes as qemu-img's" {
    cd "$BATS_FILE_TMPDIR"
    local args errs=0 a b rc1 rc2
    while IFS= read -r args; do
        rc1=0 rc2=0
        # shellcheck disable=SC2086
        a=$("$PROG" compare $args 2>/dev/null) || rc1=$?
        # shellcheck disable=SC2086
        b=$(qemu-img compare $args 2>/dev/null) || rc2=$?
        if [ "$a" != "$b" ] || [ "$rc1" -ne "$rc2" ]; then
            printf 'compare %s:\n  blockctl (%d): %s\n  qemu-img (%d): %s\n' "$args" "$rc1" "$a" "$rc2" "$b" >&2
            errs=$((errs + 1))
        fi
    done <<'EOF'
a.qcow2 b.qcow2
a.qcow2 d.qcow2
d.qcow2 a.qcow2
a.qcow2 d2.qcow2
a.qcow2 m.qcow2
-s a.qcow2 d.qcow2
a.qcow2 z.qcow2
-s a.qcow2 z.qcow2
a.qcow2 big0.qcow2
big0.qcow2 a.qcow2
-s a.qcow2 big0.qcow2
a.qcow2 bigd.qcow2
bigd.qcow2 a.qcow2
-s a.qcow2 bigd.qcow2
a.qcow2 a.raw
-f qcow2 -F raw a.qcow2 a.raw
-F raw a.qcow2 a.raw
-f raw -F raw a.qcow2 a.raw
-s a.qcow2 a.raw
-q a.qcow2 d.qcow2
-q a.qcow2 b.qcow2
a.qcow2 e.qcow2
-s a.qcow2 e.qcow2
-s e.qcow2 a.qcow2
a.qcow2 o.qcow2
-s a.qcow2 o.qcow2
-f qcow2 a.raw a.qcow2
-f qcow2 -F qcow2 a.qcow2 a.raw
a.qcow2 missing.qcow2
a.qcow2 a.qcow2
EOF
    [ "$errs" -eq 0 ]
}

@test "compare: the mismatch offset is the first differing 512-byte sector" {
    cp "$BATS_FILE_TMPDIR/a.raw" x.raw
    local off
    for off in 0 511 512 12345 65535 65536 1048575; do
        cp "$BATS_FILE_TMPDIR/a.raw" y.raw
        flip_byte y.raw "$off"
        run -1 "$PROG" compare -f raw -F raw x.raw y.raw
        [ "$output" = "Content mismatch at offset $((off / 512 * 512))!" ] || fail "byte $off: $output"
    done
}

@test "compare -p prints progress and the verdict" {
    run -0 --separate-stderr "$PROG" compare -p "$BATS_FILE_TMPDIR/a.qcow2" "$BATS_FILE_TMPDIR/b.qcow2"
    [[ $output == *"100.00/100%"* ]]
    [[ $output == *"Images are identical."* ]]
}

@test "create refuses to overwrite an existing file without --force" {
    printf 'precious data\n' >keep.img
    cp keep.img keep.orig
    run -1 --separate-stderr "$PROG" create -f qcow2 keep.img 1M
    [[ $stderr == *keep.img* ]]
    cmp keep.img keep.orig
    run -1 "$PROG" create -f raw keep.img 1M
    cmp keep.img keep.orig
    run -0 "$PROG" create -q --force -f qcow2 keep.img 1M
    qemu-img info --output=json keep.img | jq -e '.format == "qcow2" and ."virtual-size" == 1048576'
    qemu_clean keep.img
}

@test "create --force replaces an existing qcow2 image" {
    mkq old.qcow2 4M
    qio old.qcow2 'write -P 1 0 1M'
    run -0 "$PROG" create -q --force -f qcow2 old.qcow2 2M
    qemu_clean old.qcow2
    qemu-img info --output=json old.qcow2 | jq -e '."virtual-size" == 2097152'
    qemu-img map --output=json old.qcow2 | jq -e 'all(.data == false)'
}

@test "create -b without -F fails and creates nothing" {
    run -1 --separate-stderr "$PROG" create -f qcow2 -b "$BATS_FILE_TMPDIR/a.qcow2" ov.qcow2
    [[ $stderr == *"without backing format"* ]]
    [ ! -e ov.qcow2 ]
    run -1 qemu-img create -f qcow2 -b "$BATS_FILE_TMPDIR/a.qcow2" ov2.qcow2
}

@test "create -b with a missing backing file fails and creates nothing" {
    run -1 --separate-stderr "$PROG" create -f qcow2 -b nonexist.qcow2 -F qcow2 ov.qcow2
    [[ $stderr == *nonexist.qcow2* ]]
    [ ! -e ov.qcow2 ]
    run -1 "$PROG" create -f qcow2 -b nonexist.qcow2 -F qcow2 ov.qcow2 1M
    [ ! -e ov.qcow2 ]
}

@test "create -b of the image itself fails" {
    cp "$BATS_FILE_TMPDIR/a.qcow2" self.qcow2
    run -1 "$PROG" create -f qcow2 -b self.qcow2 -F qcow2 self.qcow2
    run -1 "$PROG" create --force -f qcow2 -b self.qcow2 -F qcow2 self.qcow2
    cmp self.qcow2 "$BATS_FILE_TMPDIR/a.qcow2"
}

@test "create without a size or backing file fails" {
    run -1 --separate-stderr "$PROG" create -f qcow2 x.qcow2
    [ ! -e x.qcow2 ]
    run -1 "$PROG" create x.raw
    [ ! -e x.raw ]
}

@test "create with an unknown format is a usage error" {
    run -64 "$PROG" create -f bogus x.img 1M
    [ ! -e x.img ]
}

@test "create sizes are parsed as qemu-img parses them" {
    local s errs=0 rc1 rc2 a b
    while IFS= read -r s; do
        rm -f ours.raw theirs.raw
        rc1=0 rc2=0
        "$PROG" create -q -f raw ours.raw -- "$s" >/dev/null 2>&1 || rc1=$?
        qemu-img create -q -f raw theirs.raw -- "$s" >/dev/null 2>&1 || rc2=$?
        a=$([ -e ours.raw ] && fsize ours.raw) || true
        b=$([ -e theirs.raw ] && fsize theirs.raw) || true
        if [ $((rc1 != 0)) -ne $((rc2 != 0)) ] || [ "$a" != "$b" ]; then
            printf "size '%s': blockctl exit %d size '%s'; qemu-img exit %d size '%s'\n" "$s" "$rc1" "$a" "$rc2" "$b" >&2
            errs=$((errs + 1))
        fi
    done <<'EOF'
0
512
1k
1K
1.5M
64m
1g
0x10
0x10000
1.0000001k
64b
64B
 64M
1.5X
abc
1e3
-1
1MB
1Mi
9223372036854775808
EOF
    [ "$errs" -eq 0 ]
}

@test "create prints 'Formatting' on stdout, and -q silences it" {
    run -0 --separate-stderr "$PROG" create -f qcow2 x.qcow2 1M
    [[ $output == "Formatting 'x.qcow2', fmt=qcow2 "* ]]
    [ -z "$stderr" ]
    run -0 --separate-stderr "$PROG" create -q -f qcow2 y.qcow2 1M
    [ -z "$output" ]
}

@test "multicall: a link named blockctl-info runs info" {
    ln -s "$PROG" blockctl-info
    run -0 ./blockctl-info --output=json "$BATS_FILE_TMPDIR/a.qcow2"
    local want
    want=$("$PROG" info --output=json "$BATS_FILE_TMPDIR/a.qcow2")
    [ "$output" = "$want" ]
    run -1 ./blockctl-info nonexist.qcow2
}

@test "multicall: blockctl-check, blockctl-compare, blockctl-map, blockctl-create" {
    local c
    for c in check compare map create; do ln -s "$PROG" "blockctl-$c"; done
    run -63 ./blockctl-check "$BATS_FILE_TMPDIR/r.raw"
    run -1 ./blockctl-compare "$BATS_FILE_TMPDIR/a.qcow2" "$BATS_FILE_TMPDIR/d.qcow2"
    [ "$output" = "Content mismatch at offset 12288!" ]
    run -0 ./blockctl-map --output=json "$BATS_FILE_TMPDIR/a.qcow2"
    run -0 ./blockctl-create -q -f qcow2 made.qcow2 1M
    qemu_clean made.qcow2
    run -0 ./blockctl-info --help 2>/dev/null || run -0 ./blockctl-check --help
}

@test "multicall: an unknown blockctl-NAME is a usage error" {
    ln -s "$PROG" blockctl-frob
    run -64 ./blockctl-frob
}
