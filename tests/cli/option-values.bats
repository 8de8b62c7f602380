#!/usr/bin/env bats
# Every invalid option value is a usage error (exit 64) whose message lists
# what is valid, in every command that takes the option: formats (-f, -F,
# -O, --disk format=), -o lists (unknown keys, values of the wrong type,
# values the format refuses), sizes (10Q) and the qemu-img convert flags
# (-S, -m, -r, -t, -T). Nothing is created or changed.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
    mkq a.qcow2 1M
    qio a.qcow2 'write -P 1 0 64k'
    cksum a.qcow2 >a.sum
}

setup() {
    requires_qemu
    # (bats keeps its own files in the test's folder: work in another)
    mkdir -p "$BATS_TEST_TMPDIR/w"
    cd "$BATS_TEST_TMPDIR/w" || return 1
    A=$BATS_FILE_TMPDIR/a.qcow2
}

# usage WANT ARGS...: blockctl ARGS exits 64, its message says WANT, nothing
# new in the folder, a.qcow2 unchanged
usage() {
    local want=$1
    shift
    run --separate-stderr timeout 30 "$PROG" "$@"
    [ "$status" -eq 64 ] || { fail "blockctl $* exited $status: $stderr"; return 1; }
    [[ $stderr == *"$want"* ]] || { fail "blockctl $*: the message does not say '$want': $stderr"; return 1; }
    [ -z "$(ls -A)" ] || { fail "blockctl $* left: $(ls -A)"; return 1; }
    [ "$(cd "$BATS_FILE_TMPDIR" && cksum a.qcow2)" = "$(cat "$BATS_FILE_TMPDIR/a.sum")" ] ||
        { fail "blockctl $* changed a.qcow2"; return 1; }
}

FMTS="valid: raw, qcow2"

@test "-f with an unknown format: 64 in every command, naming the formats" {
    local c
    for c in info check map stream commit; do
        usage "$FMTS" $c -f vmdk "$A"
    done
    usage "$FMTS" compare -f vmdk "$A" "$A"
    usage "$FMTS" compare -F vmdk "$A" "$A"
    usage "$FMTS" mirror -f vmdk "$A" t.qcow2
    usage "$FMTS" convert -f vmdk "$A" t.raw
    usage "$FMTS" bitmap -f vmdk --add "$A" b
    usage "$FMTS" bitmap -F vmdk --merge x -b "$A" "$A" b
    usage "$FMTS" snapshot -F vmdk "$A" s.qcow2
    usage "$FMTS" create -f qcow2 -b "$A" -F vmdk t.qcow2
    usage "$FMTS" create -f qcow2 -o backing_file="$A",backing_fmt=vmdk t.qcow2
    usage "$FMTS" mirror -O qcow2 -B "$A" -F vmdk "$A" t.qcow2
    usage "$FMTS" convert -O qcow2 -B "$A" -F vmdk "$A" t.qcow2
    usage "$FMTS" agent --qmp q.sock --nbd unix:n.sock --disk vda="$A",format=vmdk
    usage "$FMTS" measure -f vmdk "$A"
    usage "$FMTS" amend -f vmdk -o compat=1.1 "$A"
    usage "$FMTS" resize -f vmdk "$A" +1M
    usage "$FMTS" rebase -f vmdk -b "$A" -F qcow2 "$A"
    usage "$FMTS" rebase -b "$A" -F vmdk "$A"
    usage "$FMTS" rebase -u -b "$A" -F vmdk "$A"
    # a protocol is not a format
    usage "$FMTS" info -f nbd "$A"
}

@test "-O (create -f) with a format that cannot be created: 64, naming the formats" {
    usage "$FMTS" create -f qcow t.img 1M
    usage "$FMTS" mirror -O qcow "$A" t.img
    usage "$FMTS" convert -O qcow "$A" t.img
    usage "$FMTS" convert -O vmdk "$A" t.img
    usage "$FMTS" measure -O qcow --size 1M
    usage "$FMTS" measure -O qcow "$A"
}

@test "-o with an unknown key: 64, listing the format's keys" {
    usage "cluster_size" create -f qcow2 -o cluster_szie=4k t.qcow2 1M
    usage "preallocation" create -f raw -o cluster_size=4k t.raw 1M
    usage "cluster_size" mirror -O qcow2 -o cluster_szie=4k "$A" t.qcow2
    usage "cluster_size" convert -O qcow2 -o cluster_szie=4k "$A" t.qcow2
    usage "cluster_size" snapshot -o cluster_szie=4k "$A" s.qcow2
    usage "cluster_size" measure -O qcow2 -o cluster_szie=4k --size 1M
    usage "preallocation" measure -O raw -o cluster_size=4k --size 1M
    usage "compat" amend -o cluster_szie=4k "$A"
}

@test "-o with a bad value: 64, saying what is valid" {
    usage "power of two" create -f qcow2 -o cluster_size=3k t.qcow2 1M
    usage "expects a size" create -f qcow2 -o cluster_size=10Q t.qcow2 1M
    usage "zlib or zstd" create -f qcow2 -o compression_type=lz4 t.qcow2 1M
    usage "'on' or 'off'" create -f qcow2 -o lazy_refcounts=maybe t.qcow2 1M
    usage "off, falloc, full" create -f raw -o preallocation=sparse t.raw 1M
    usage "power of two" mirror -O qcow2 -o cluster_size=3k "$A" t.qcow2
    usage "power of two" convert -O qcow2 -o cluster_size=3k "$A" t.qcow2
    usage "expects a size" convert -O qcow2 -o cluster_size=10Q "$A" t.qcow2
    usage "power of two" snapshot -o cluster_size=3k "$A" s.qcow2
    usage "zlib or zstd" snapshot -o compression_type=lz4 "$A" s.qcow2
    usage "power of two" measure -O qcow2 -o cluster_size=3k --size 1M
    usage "valid: 0.10, 1.1" measure -O qcow2 -o compat=2 --size 1M
    usage "valid: off, metadata, falloc, full" measure -O qcow2 -o preallocation=x --size 1M
    usage "'on' or 'off'" measure -O qcow2 -o lazy_refcounts=maybe --size 1M
    usage "valid: 0.10 or v2, 1.1 or v3" amend -o compat=2 "$A"
    usage "power of two" amend -o refcount_bits=3 "$A"
    usage "'on' or 'off'" amend -o lazy_refcounts=maybe "$A"
    usage "k, M, G, T, P or E" amend -o size=10Q "$A"
}

@test "sizes such as 10Q: 64 in every command that takes one" {
    local suffixes="k, M, G, T, P"
    usage "$suffixes" create -f qcow2 t.qcow2 10Q
    usage "$suffixes" create -f qcow2 -o size=10Q t.qcow2
    usage "$suffixes" map --start-offset 10Q "$A"
    usage "$suffixes" map --max-length 10Q "$A"
    usage "$suffixes" bitmap --add -g 10Q "$A" b
    usage "$suffixes" mirror --bandwidth 10Q "$A" t.qcow2
    usage "$suffixes" mirror -r 10Q "$A" t.qcow2
    usage "$suffixes" mirror --buf-size 10Q "$A" t.qcow2
    usage "$suffixes" stream --bandwidth 10Q "$A"
    usage "$suffixes" commit --bandwidth 10Q "$A"
    usage "$suffixes" convert -r 10Q "$A" t.raw
    usage "multiples of 512" convert -S 10Q "$A" t.raw
    usage "multiples of 512" mirror -S 10Q "$A" t.qcow2
    usage "multiples of 512" convert -S 1000 "$A" t.raw
    usage "$suffixes" measure --size 10Q
    usage "k, M, G, T, P or E" resize "$A" 10Q
    usage "k, M, G, T, P or E" resize "$A" +10Q
}

@test "-m, -t and -T values: 64, saying what is valid" {
    usage "1 to 16" convert -m 17 "$A" t.raw
    usage "1 to 16" convert -m x "$A" t.raw
    usage "1 to 16" mirror -m 0 "$A" t.qcow2
    local modes="valid: none, writeback, writethrough, directsync, unsafe" c
    usage "Invalid cache option: bogus ($modes)" convert -t bogus "$A" t.raw
    usage "Invalid source cache option: bogus ($modes)" convert -T bogus "$A" t.raw
    usage "Invalid cache option: bogus ($modes)" mirror -t bogus "$A" t.qcow2
    # the same words in every command that takes them (one parser)
    for c in amend resize commit stream rebase; do
        usage "Invalid cache option: nope ($modes)" $c -t nope "$A"
    done
    for c in check stream rebase; do
        usage "Invalid source cache option: nope ($modes)" $c -T nope "$A"
    done
    usage "Invalid source cache option: nope ($modes)" compare -T nope "$A" "$A"
    usage "Invalid source cache option: nope ($modes)" mirror -T nope "$A" t.qcow2
    # -t/-T where the command neither writes nor reads data is no option
    usage "invalid option" info -t none "$A"
    usage "invalid option" map -T none "$A"
}

@test "--output with an unknown form: 64 in every command that takes it, naming both" {
    local want="--output must be 'human' or 'json', not 'xml'"
    usage "$want" info --output=xml "$A"
    usage "$want" check --output=xml "$A"
    usage "$want" map --output=xml "$A"
    usage "$want" measure --output=xml --size 1M
    usage "$want" measure --output=xml "$A"
    usage "$want" bitmap --list --output=xml "$A"
    usage "$want" snapshot --output=xml "$A" s.qcow2
    usage "$want" job list --output=xml
}
