#!/usr/bin/env bats
# blockctl measure against qemu-img measure 7.2: the same figures, byte for
# byte in both output forms, the same messages and exit codes, for a table
# of source images and -O/-o combinations.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
    mkq empty.qcow2 64M
    # data, zero clusters (plain and kept), compressed, discarded, unaligned tails
    mkq data.qcow2 64M
    qio data.qcow2 'write -P 1 0 1M' 'write -z 2M 1M' 'write -P 2 5M 4k' \
        'write -c -P 3 10M 64k' 'write -P 4 12M 128k' 'write -z 12M 64k' \
        'write -P 5 20M 1M' 'discard 20M 512k' 'write -P 6 67104768 4096'
    mkq c4k.qcow2 8M cluster_size=4k
    qio c4k.qcow2 'write -P 1 1000 5000' 'write -z 64k 8k' 'write -c -P 2 1M 4k' 'write -P 3 7M 100'
    mkq c512.qcow2 2M cluster_size=512
    qio c512.qcow2 'write -P 1 0 1536' 'write -P 2 1M 512'
    mkq extl2.qcow2 16M extended_l2=on,cluster_size=64k
    qio extl2.qcow2 'write -P 1 0 2k' 'write -P 2 70k 6k' 'write -z 1M 4k' 'write -P 3 2M 1M'
    mkq zstd.qcow2 8M compression_type=zstd
    qio zstd.qcow2 'write -c -P 1 0 64k' 'write -P 2 1M 64k'
    mkq v2.qcow2 8M compat=0.10
    qio v2.qcow2 'write -P 1 64k 64k' 'write -z 1M 64k'
    mkq rc1.qcow2 8M refcount_bits=1
    qio rc1.qcow2 'write -P 1 0 3M'
    # persistent bitmaps of several granularities and name lengths
    mkq bm.qcow2 32M
    qemu-img bitmap --add bm.qcow2 b0
    qemu-img bitmap --add -g 512 bm.qcow2 a-rather-long-bitmap-name-0123456789abcdef
    qemu-img bitmap --add -g 2M --disable bm.qcow2 coarse
    qio bm.qcow2 'write -P 1 0 1M'
    mkq bm-empty.qcow2 4M
    qemu-img bitmap --add bm-empty.qcow2 x
    # internal snapshot: measured as of the snapshot with -l
    mkq snap.qcow2 16M
    qio snap.qcow2 'write -P 1 0 1M'
    qemu-img snapshot -c s1 snap.qcow2
    qio snap.qcow2 'write -P 2 4M 2M' 'write -z 0 64k'
    qemu-img snapshot -c s2 snap.qcow2
    qio snap.qcow2 'discard 4M 1M'
    # raw: sparse (holes), full, and an odd size
    truncate -s 10M sparse.raw
    QIO_FMT=raw qio sparse.raw 'write -P 1 1M 100k' 'write -P 2 9M 4k'
    head -c 3M /dev/urandom >full.raw
    truncate -s 1000000 odd.raw
    QIO_FMT=raw qio odd.raw 'write -P 1 0 512'
    # a chain: raw base, qcow2 middle, qcow2 top larger than both
    truncate -s 4M base.raw
    QIO_FMT=raw qio base.raw 'write -P 1 0 1M' 'write -P 2 3M 64k'
    qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 6M
    qio mid.qcow2 'write -P 3 1M 1M' 'write -z 0 64k' 'write -P 4 5M 64k'
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 12M
    qio top.qcow2 'write -P 5 8M 64k' 'write -z 3M 64k' 'write -P 6 1536k 4k'
}

setup() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
}

# same_as_qemu ARGS...: blockctl measure ARGS prints what qemu-img measure
# ARGS prints, on stdout and stderr (the program name aside), and exits
# the same
same_as_qemu() {
    local qo qe qrc=0 bo be brc=0
    qo=$(qemu-img measure "$@" 2>"$BATS_TEST_TMPDIR/qe") || qrc=$?
    bo=$("$PROG" measure "$@" 2>"$BATS_TEST_TMPDIR/be") || brc=$?
    qe=$(sed 's/^qemu-img: //' "$BATS_TEST_TMPDIR/qe")
    be=$(sed 's/^blockctl: //' "$BATS_TEST_TMPDIR/be")
    [ "$brc" -eq "$qrc" ] || { fail "measure $*: blockctl exited $brc, qemu-img $qrc ($be / $qe)"; return 1; }
    text_diff "$bo" "$qo" "measure $* (stdout)" || return 1
    text_diff "$be" "$qe" "measure $* (stderr)" || return 1
}

# The -O/-o combinations of the table
TARGETS=(
    ""
    "-O raw"
    "-O qcow2"
    "-O qcow2 -o cluster_size=512"
    "-O qcow2 -o cluster_size=4k"
    "-O qcow2 -o cluster_size=16k,extended_l2=on"
    "-O qcow2 -o cluster_size=2M"
    "-O qcow2 -o cluster_size=1M,refcount_bits=64"
    "-O qcow2 -o refcount_bits=1"
    "-O qcow2 -o refcount_bits=8,lazy_refcounts=on"
    "-O qcow2 -o extended_l2=on"
    "-O qcow2 -o compat=0.10"
    "-O qcow2 -o compat=1.1,compression_type=zstd"
    "-O qcow2 -o preallocation=metadata"
    "-O qcow2 -o preallocation=falloc"
    "-O qcow2 -o preallocation=full,cluster_size=8k"
    "-O qcow2 -o backing_file=some.qcow2,backing_fmt=qcow2"
    "-O qcow2 -o backing_file="
    "-O qcow2 -o size=1G"
    "-O qcow2 -o nocow=on,extent_size_hint=1M"
    "-O raw -o preallocation=full"
)

# measure_table SOURCE_ARGS: every target, both output forms
measure_table() {
    local t out bad=0
    for t in "${TARGETS[@]}"; do
        for out in "" --output=human --output=json; do
            # shellcheck disable=SC2086
            same_as_qemu $out $t "$@" || bad=1
        done
    done
    [ "$bad" -eq 0 ]
}

@test "measure: qcow2 sources (empty, data/zero/compressed, 4k, 512 B, extended L2, zstd, v2, refcount_bits=1)" {
    local f
    for f in empty data c4k c512 extl2 zstd v2 rc1; do
        measure_table $f.qcow2
    done
}

@test "measure: raw sources (sparse, full, odd size), with and without -f raw" {
    measure_table sparse.raw
    measure_table -f raw full.raw
    measure_table -f raw odd.raw
}

@test "measure: a backing chain counts the whole chain's guest data (top, middle, -U)" {
    measure_table top.qcow2
    measure_table mid.qcow2
    measure_table -U -f qcow2 top.qcow2
}

@test "measure: persistent bitmaps: 'bitmaps' figures as qemu-img's (qcow2 v3 targets only)" {
    measure_table bm.qcow2
    measure_table bm-empty.qcow2
    # the line is there for a v3 qcow2 source and target, and only then
    run -0 "$PROG" measure -O qcow2 bm.qcow2
    [[ $output == *"bitmaps size: "* ]] || fail "no bitmaps line: $output"
    run -0 "$PROG" measure -O qcow2 -o compat=0.10 bm.qcow2
    [[ $output != *bitmaps* ]] || fail "bitmaps line for a v2 target: $output"
    run -0 "$PROG" measure -O qcow2 sparse.raw
    [[ $output != *bitmaps* ]] || fail "bitmaps line for a raw source: $output"
}

@test "measure -l: an internal snapshot by name, by ID, snapshot.name=, snapshot.id=" {
    local l
    for l in s1 s2 1 2 snapshot.name=s1 snapshot.id=2 snapshot.id=1,snapshot.name=s1; do
        same_as_qemu -O qcow2 -l "$l" snap.qcow2
        same_as_qemu --output=json -O qcow2 -o cluster_size=4k -l "$l" snap.qcow2
        same_as_qemu -l "$l" snap.qcow2
    done
    same_as_qemu -O qcow2 snap.qcow2
    # the snapshot's figures differ from the image's now: -l is not ignored
    [ "$("$PROG" measure -O qcow2 -l s1 snap.qcow2)" != "$("$PROG" measure -O qcow2 snap.qcow2)" ] ||
        fail "-l s1 measured the current contents"
}

@test "measure --size: suffixes, fractions, hex, rounding, limits, each target" {
    local s t bad=0
    for s in 0 1 511 512 1000 64k 1M 1.5G 100G 2T 0x10000 9223372036854775807; do
        for t in "${TARGETS[@]}"; do
            # shellcheck disable=SC2086
            same_as_qemu --size "$s" $t || bad=1
            # shellcheck disable=SC2086
            same_as_qemu --output=json --size "$s" $t || bad=1
        done
    done
    [ "$bad" -eq 0 ]
}

# each_row FN: FN ARGS for each line of stdin (its words); fails if one did
each_row() {
    local bad=0 args
    while IFS= read -r args; do
        [ -n "$args" ] || continue
        # shellcheck disable=SC2086
        "$1" $args || bad=1
    done
    [ "$bad" -eq 0 ]
}

@test "measure: errors qemu-img has too: its messages and exit codes" {
    each_row same_as_qemu <<'EOF'
-l nosuch data.qcow2
-l nosuch sparse.raw
-O qcow2 -o cluster_size=512 --size 100T
-f raw -l s1 data.qcow2
EOF
}

# usage_as_qemu ARGS...: qemu-img measure ARGS fails (exit 1) and
# blockctl's is a usage error (64) with nothing on stdout; its message is
# qemu-img's, with "(valid: ...)" added where qemu-img does not say what
# is valid
usage_as_qemu() {
    local qe be brc=0 qrc=0
    qemu-img measure "$@" >/dev/null 2>"$BATS_TEST_TMPDIR/qe" || qrc=$?
    "$PROG" measure "$@" >"$BATS_TEST_TMPDIR/bo" 2>"$BATS_TEST_TMPDIR/be" || brc=$?
    qe=$(sed 's/^qemu-img: //' "$BATS_TEST_TMPDIR/qe")
    be=$(sed -e 's/^blockctl: //' -e 's/ (valid: [^)]*)$//' "$BATS_TEST_TMPDIR/be")
    [ "$qrc" -eq 1 ] || { fail "qemu-img measure $*: exited $qrc"; return 1; }
    [ "$brc" -eq 64 ] || { fail "measure $*: exited $brc: $be"; return 1; }
    [ ! -s "$BATS_TEST_TMPDIR/bo" ] || { fail "measure $*: stdout: $(cat "$BATS_TEST_TMPDIR/bo")"; return 1; }
    text_diff "$be" "$qe" "measure $* (stderr)" || return 1
}

@test "measure: usage errors exit 64 (qemu-img: 1) with qemu-img's messages and what is valid" {
    each_row usage_as_qemu <<'EOF'
--size 1G data.qcow2
-O qcow2
-l s1 --size 1G
-f qcow2 --size 1G
data.qcow2 sparse.raw
-O qcow2 -o foo=1 --size 1G
-O qcow2 -o foo --size 1G
-O qcow2 -o help --size 1G
-O raw -o cluster_size=64k --size 1G
-O qcow2 -o cluster_size=3k --size 1G
-O qcow2 -o cluster_size=4M --size 1G
-O qcow2 -o cluster_size=x --size 1G
-O qcow2 -o cluster_size=8k,extended_l2=on --size 1G
-O qcow2 -o compat=0.9 --size 1G
-O qcow2 -o compat=v2 --size 1G
-O qcow2 -o refcount_bits=3 --size 1G
-O qcow2 -o refcount_bits=128 --size 1G
-O qcow2 -o refcount_bits=x --size 1G
-O qcow2 -o refcount_bits=8,compat=0.10 --size 1G
-O qcow2 -o lazy_refcounts=maybe --size 1G
-O qcow2 -o preallocation=sometimes --size 1G
-O qcow2 -o cluster_size=512 data.qcow2 --size 1
EOF
    usage_as_qemu || return 1
    # what qemu-img does not list, blockctl does
    run -64 --separate-stderr "$PROG" measure -O qcow2 -o cluster_szie=4k --size 1G
    [[ ${stderr_lines[0]} == *"(valid: backing_file, backing_fmt, cluster_size, "*", extent_size_hint)" ]] ||
        fail "$stderr"
    run -64 --separate-stderr "$PROG" measure -O qcow2 -o compat=0.9 --size 1G
    [[ $stderr == *"(valid: 0.10, 1.1)" ]] || fail "$stderr"
    run -64 --separate-stderr "$PROG" measure -O qcow2 -o preallocation=sometimes --size 1G
    [[ $stderr == *"(valid: off, metadata, falloc, full)" ]] || fail "$stderr"
    # -O and sizes: said as every command says them
    local o
    for o in qcow vmdk nbd nosuch; do
        run -64 --separate-stderr "$PROG" measure -O $o --size 1G
        [[ $stderr == *"invalid format '$o' for -O (valid: raw, qcow2)"* ]] || fail "$stderr"
        run -1 qemu-img measure -O $o --size 1G
    done
    for o in 10Q 1x -1 8E 8E-1 1.5; do
        run -64 --separate-stderr "$PROG" measure --size $o
        [[ $stderr == *"invalid image size '$o'"*"k, M, G, T, P or E"* ]] || fail "$o: $stderr"
        [ -z "$output" ]
        run -1 qemu-img measure --size $o
    done
}

@test "measure: a file that cannot be opened fails with exit 1 and one line naming it" {
    local f
    for f in nosuch.qcow2 "-f qcow2 sparse.raw"; do
        # shellcheck disable=SC2086
        expect_exit 1 qemu-img measure -O qcow2 $f 2>/dev/null
        # shellcheck disable=SC2086
        run --separate-stderr "$PROG" measure -O qcow2 $f
        [ "$status" -eq 1 ] || fail "$f: exited $status"
        [ -z "$output" ] || fail "$f: stdout: $output"
        [[ $stderr == *"${f##* }"* ]] || fail "$f: stderr: $stderr"
        [ "$(wc -l <<<"$stderr")" -eq 1 ] || fail "$f: stderr: $stderr"
    done
}

@test "measure: the required size holds a converted copy, and fully-allocated a preallocated one" {
    local f req full
    for f in data.qcow2 top.qcow2 sparse.raw; do
        req=$("$PROG" measure --output=json -O qcow2 "$f" | jq '.required')
        full=$("$PROG" measure --output=json -O qcow2 "$f" | jq '."fully-allocated"')
        qemu-img convert -O qcow2 "$f" "$BATS_TEST_TMPDIR/c.qcow2"
        [ "$(fsize "$BATS_TEST_TMPDIR/c.qcow2")" -le "$req" ] ||
            fail "$f: converted to $(fsize "$BATS_TEST_TMPDIR/c.qcow2") bytes > required $req"
        qemu-img convert -O qcow2 -o preallocation=full "$f" "$BATS_TEST_TMPDIR/p.qcow2"
        [ "$(fsize "$BATS_TEST_TMPDIR/p.qcow2")" -le "$full" ] ||
            fail "$f: preallocated to $(fsize "$BATS_TEST_TMPDIR/p.qcow2") bytes > fully-allocated $full"
    done
}
