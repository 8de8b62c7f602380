#!/usr/bin/env bats
# blockctl convert against qemu-img convert 7.2, flag for flag: for raw
# and qcow2 sources (chains with several cluster sizes, compressed and zero
# clusters), several sources concatenated, -B, -S, -c, -o, --bitmaps,
# --salvage and -n, both commands run with the same arguments; the output
# must read as the source (qemu-img compare), as qemu-img's output, have
# the same qemu-img info fields (format, virtual size, cluster size,
# compression type, backing file) and the same allocation (qemu-img map
# --output=json, host offsets left out and touching extents of the same
# kind joined: out-of-order writes place clusters differently), and pass
# qemu-img check.  Errors: the exit status and message of qemu-img's
# common ones, 64 for bad option values, nothing left behind.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    setup_chains raw qcow2
    cd "$BATS_FILE_TMPDIR" || return 1
    # a raw source whose size is not a multiple of 512 or of any cluster
    qemu-img create -q -f raw odd.raw 100000
    QIO_FMT=raw qio odd.raw 'write -P 0x61 0 100000'
}

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
}

teardown() {
    copy_teardown
}

# the allocation of IMG (format FMT) as qemu-img map says, without host
# offsets, touching extents of the same kind joined
alloc() {
    qemu-img map -f "$2" --output=json "$1" | jq -c '
        reduce (.[] | del(.offset)) as $e ([];
            if length > 0 and (.[-1] | del(.start, .length)) == ($e | del(.start, .length))
               and (.[-1].start + .[-1].length) == $e.start
            then .[-1].length += $e.length else . + [$e] end)'
}

# the info fields that must agree
infof() {
    qemu-img info -f "$2" --output=json "$1" | jq -c '{format, "virtual-size",
        "cluster-size", c: ."format-specific".data."compression-type",
        b: ."backing-filename", bf: ."backing-filename-format"}'
}

# same_as_qemu [-r REF] ARGS... SOURCE... : blockctl convert ARGS SOURCES
# o.b and qemu-img convert ARGS SOURCES o.q both succeed; o.b reads as
# o.q (and as REF when given), with qemu-img's info fields and allocation
same_as_qemu() {
    local ref= fmt a q
    if [ "$1" = -r ]; then
        ref=$2
        shift 2
    fi
    rm -f o.b o.q
    run --separate-stderr timeout 120 "$PROG" convert "$@" o.b
    [ "$status" -eq 0 ] || { fail "blockctl convert $* exited $status: $stderr"; return 1; }
    [ -z "$stderr" ] || { fail "blockctl convert $* printed: $stderr"; return 1; }
    qemu-img convert "$@" o.q || { fail "qemu-img convert $* failed"; return 1; }
    [ ! -e o.b.part ] || { fail "o.b.part left behind"; return 1; }
    fmt=$(qemu-img info --output=json o.q | jq -r .format)
    qemu-img compare -q -f "$fmt" -F "$fmt" o.b o.q ||
        { fail "convert $*: o.b does not read as qemu-img's output"; return 1; }
    if [ -n "$ref" ]; then
        qemu-img compare -q -f "$fmt" -F raw o.b "$ref" ||
            { fail "convert $*: o.b does not read as $ref"; return 1; }
    fi
    a=$(infof o.b "$fmt")
    q=$(infof o.q "$fmt")
    [ "$a" = "$q" ] || { fail "convert $*: info $a, qemu-img's $q"; return 1; }
    a=$(alloc o.b "$fmt")
    q=$(alloc o.q "$fmt")
    if [ "$a" != "$q" ]; then
        echo "convert $*: allocation differs (< blockctl, > qemu-img)" >&2
        diff <(jq -c '.[]' <<<"$a") <(jq -c '.[]' <<<"$q") >&2
        return 1
    fi
    if [ "$fmt" = qcow2 ]; then
        qemu-img check -q o.b || { fail "convert $*: qemu-img check failed"; return 1; }
    fi
}

OPTS=(
    ""
    "-O raw -S 0"
    "-O raw -S 64k"
    "-O qcow2"
    "-O qcow2 -o cluster_size=512"
    "-O qcow2 -o cluster_size=4k,compat=0.10"
    "-O qcow2 -o cluster_size=2M"
    "-O qcow2 -S 0"
    "-O qcow2 -c"
    "-O qcow2 -c -o compression_type=zstd"
    "-O qcow2 -c -o cluster_size=4k"
)

# matrix SOURCE REF: every option set above
matrix() {
    local o
    for o in "${OPTS[@]}"; do
        # shellcheck disable=SC2086
        same_as_qemu -r "$2" $o "$1" || return 1
    done
}

@test "convert a qcow2 chain (2M, 4k, 64k clusters; compressed and zero clusters): as qemu-img, for each option set" {
    use_chain qcow2
    matrix c/top.qcow2 "$V/top.raw"
}

@test "convert a qcow2 image of 4k clusters and one of compressed clusters: as qemu-img" {
    use_chain qcow2
    matrix c/l2.qcow2 "$V/l2.raw"
    matrix "$BASE" "$V/base.raw"
}

@test "convert a raw image: as qemu-img, for each option set" {
    use_chain raw
    matrix "$BASE" "$V/base.raw"
    same_as_qemu -r "$V/top.raw" -f qcow2 c/top.qcow2
}

@test "convert several sources: concatenated as qemu-img does, sizes off any grid included" {
    use_chain qcow2
    local o
    cat "$V/top.raw" "$BATS_FILE_TMPDIR/odd.raw" "$V/l1.raw" "$BATS_FILE_TMPDIR/odd.raw" >all.raw
    for o in "" "-O qcow2" "-O qcow2 -c" "-O qcow2 -c -o cluster_size=4k" "-O qcow2 -S 0"; do
        # shellcheck disable=SC2086
        same_as_qemu -r all.raw $o c/top.qcow2 "$BATS_FILE_TMPDIR/odd.raw" c/l1.qcow2 \
            "$BATS_FILE_TMPDIR/odd.raw"
    done
    # (as qemu-img: each source's size rounded up to 512 bytes)
    [ "$(infof o.b qcow2 | jq '."virtual-size"')" -eq $((2 * CHAIN_BYTES + 2 * 100352)) ] ||
        { qemu-img info o.b; fail "virtual size is not the sum of the sources"; }
}

@test "convert -B -F: only the source's top layer is copied, zeroes over the backing file, as qemu-img" {
    use_chain qcow2
    same_as_qemu -r "$V/top.raw" -O qcow2 -B c/l2.qcow2 -F qcow2 c/top.qcow2
    backing_is o.b c/l2.qcow2 qcow2
    # a backing file that is not the source's: what qemu-img makes, too
    cp -r c/b b
    cp c/l1.qcow2 l1.qcow2
    same_as_qemu -O qcow2 -B l1.qcow2 -F qcow2 c/top.qcow2
    same_as_qemu -O qcow2 -c -o cluster_size=512 -B l1.qcow2 -F qcow2 c/top.qcow2
    same_as_qemu -O qcow2 -B l1.qcow2 -F qcow2 "$BASE"
}

@test "convert --bitmaps: the source's persistent bitmaps, their granularity and state, as qemu-img" {
    mkq s.qcow2 8M
    qio s.qcow2 'write -P 1 0 1M'
    qemu-img bitmap --add s.qcow2 b0
    qemu-img bitmap --add -g 128k s.qcow2 b1
    qio s.qcow2 'write -P 2 2M 64k' 'write -P 3 5M 4k'
    qemu-img bitmap --disable s.qcow2 b1
    qio s.qcow2 'write -P 4 7M 4k'
    same_as_qemu -O qcow2 --bitmaps s.qcow2
    local a q b
    a=$(qemu-img info --output=json o.b | jq -c '."format-specific".data.bitmaps')
    q=$(qemu-img info --output=json o.q | jq -c '."format-specific".data.bitmaps')
    [ "$a" = "$q" ] || fail "bitmaps: $a, qemu-img's $q"
    [ "$(jq length <<<"$a")" -eq 2 ] || fail "expected two bitmaps: $a"
    for b in b0 b1; do
        [ "$("$PROG" bitmap --dump --output=json o.b $b)" = "$("$PROG" bitmap --dump --output=json o.q $b)" ] ||
            fail "bitmap $b differs from qemu-img's"
        [ "$("$PROG" bitmap --dump --output=json o.b $b)" = "$("$PROG" bitmap --dump --output=json s.qcow2 $b)" ] ||
            fail "bitmap $b differs from the source's"
    done
    # without --bitmaps: none
    same_as_qemu -O qcow2 s.qcow2
    [ "$(qemu-img info --output=json o.b | jq -c '."format-specific".data.bitmaps // []')" = "[]" ]
}

@test "convert --bitmaps refuses an inconsistent bitmap; --skip-broken-bitmaps skips it, as qemu-img" {
    mkq s.qcow2 4M
    qemu-img bitmap --add s.qcow2 good
    qemu-io -c 'write -P 1 0 64k' -c 'sigraise 9' s.qcow2 >/dev/null 2>&1 || true
    run -1 qemu-img convert -O qcow2 --bitmaps s.qcow2 q.qcow2
    run -1 --separate-stderr "$PROG" convert -O qcow2 --bitmaps s.qcow2 b.qcow2
    [[ $stderr == *"inconsistent bitmap 'good'"* ]] || fail "$stderr"
    [ ! -e b.qcow2 ] && [ ! -e b.qcow2.part ]
    rm -f o.q
    qemu-img convert -O qcow2 --bitmaps --skip-broken-bitmaps s.qcow2 o.q 2>/dev/null
    run -0 --separate-stderr "$PROG" convert -O qcow2 --bitmaps --skip-broken-bitmaps s.qcow2 o.b
    [[ $stderr == *"Skipping inconsistent bitmap 'good'"* ]] || fail "$stderr"
    qemu-img compare -q o.b o.q
    [ "$(qemu-img info --output=json o.b | jq -c '."format-specific".data.bitmaps // []')" = "[]" ]
}

@test "convert --salvage: an unreadable compressed cluster is written as zeroes, as qemu-img" {
    mkq s.qcow2 1M
    qio s.qcow2 'write -P 1 0 64k' 'write -c -P 5 64k 64k' 'write -P 2 128k 64k'
    qedit s.qcow2 l2desc 65536 0
    run -1 qemu-img convert s.qcow2 x.raw
    run -1 --separate-stderr "$PROG" convert s.qcow2 x.raw
    [ ! -e x.raw ] && [ ! -e x.raw.part ]
    rm -f o.q o.b
    qemu-img convert --salvage s.qcow2 o.q 2>/dev/null
    run -0 --separate-stderr "$PROG" convert --salvage s.qcow2 o.b
    [[ $stderr == *"error while reading offset 65536"* ]] || fail "$stderr"
    cmp o.b o.q
    QIO_FMT=raw qio o.b 'read -P 0 64k 64k' 'read -P 2 128k 64k'
}

@test "convert -n and mirror -n: into an existing image of the same size, or larger (its tail untouched), as qemu-img" {
    use_chain qcow2
    local t
    for t in raw qcow2; do
        rm -f o.b o.q
        qemu-img create -q -f $t o.q 48M
        QIO_FMT=$t qio o.q 'write -P 0x77 0 48M'
        cp o.q o.b
        qemu-img convert -n -O $t c/top.qcow2 o.q
        run -0 --separate-stderr "$PROG" convert -n -O $t c/top.qcow2 o.b
        [ -z "$stderr" ] || fail "$stderr"
        # the same bytes as qemu-img's, the source's first, then the old tail
        qemu-img compare -q -f $t -F $t o.b o.q
        qemu-img convert -f $t -O raw o.b b.raw
        cmp -n $CHAIN_BYTES b.raw "$V/top.raw"
        QIO_FMT=$t qio o.b "read -P 0x77 32M 16M"
        [ $t = raw ] || qemu-img check -q o.b
        # mirror -n: the same
        qemu-img create -q -f $t m.$t 48M
        QIO_FMT=$t qio m.$t 'write -P 0x77 0 48M'
        run -0 --separate-stderr "$PROG" mirror -n -O $t c/top.qcow2 m.$t
        qemu-img compare -q -f $t -F $t m.$t o.q
        # the same size: as the source
        qemu-img create -q -f $t s.$t 32M
        QIO_FMT=$t qio s.$t 'write -P 0x77 0 32M'
        run -0 "$PROG" convert -n -O $t c/top.qcow2 s.$t
        qemu-img compare -q -F $t c/top.qcow2 s.$t
    done
}

@test "convert -n --target-is-zero: zeroes are not written, as qemu-img" {
    use_chain qcow2
    qemu-img create -q -f raw o.q 32M
    qemu-img create -q -f raw o.b 32M
    qemu-img convert -n --target-is-zero c/top.qcow2 o.q
    run -0 "$PROG" convert -n --target-is-zero c/top.qcow2 o.b
    qemu-img compare -q -f raw -F raw o.b o.q
    [ "$(alloc o.b raw)" = "$(alloc o.q raw)" ]
}

@test "convert -n: a smaller target is refused, as qemu-img, nothing written" {
    use_chain qcow2
    qemu-img create -q -f raw small.raw 16M
    run -1 qemu-img convert -n c/top.qcow2 small.raw
    local sum
    sum=$(cksum <small.raw)
    run -1 --separate-stderr "$PROG" convert -n c/top.qcow2 small.raw
    one_line_error small.raw
    [[ $stderr == *"output file is smaller than input file"* ]] || fail "$stderr"
    [ "$(cksum <small.raw)" = "$sum" ]
    run -1 "$PROG" mirror -n c/top.qcow2 small.raw
    [ "$(cksum <small.raw)" = "$sum" ]
}

@test "convert replaces an existing OUTPUT (through a symbolic link too), only once complete" {
    use_chain qcow2
    echo old >out.raw
    run -0 "$PROG" convert c/top.qcow2 out.raw
    qemu-img compare -q -F raw c/top.qcow2 out.raw
    [ ! -e out.raw.part ]
    echo old >real.raw
    ln -s real.raw link.raw
    run -0 "$PROG" convert -O qcow2 c/top.qcow2 link.raw
    [ -L link.raw ] || fail "the link was replaced"
    qemu-img compare -q c/top.qcow2 real.raw
    # interrupted: the old file stays
    echo old >keep.raw
    run -130 --separate-stderr timeout --preserve-status -s INT 0.5 "$PROG" convert -r 1M c/top.qcow2 keep.raw
    [ "$(cat keep.raw)" = old ] || fail "an interrupted convert changed keep.raw"
    [ ! -e keep.raw.part ] || fail "keep.raw.part left behind"
}

@test "convert refuses an OUTPUT a running qemu-nbd holds" {
    requires_cmd qemu-nbd
    use_chain qcow2
    qemu-img create -q -f raw busy.raw 32M
    nbd_serve busy -f raw busy.raw
    local sum
    sum=$(cksum <busy.raw)
    run -1 --separate-stderr "$PROG" convert c/top.qcow2 busy.raw
    [[ $stderr == *busy.raw* ]] || fail "$stderr"
    [ "$(cksum <busy.raw)" = "$sum" ]
    [ ! -e busy.raw.part ]
}

@test "convert into an NBD export, as qemu-img convert -n" {
    requires_cmd qemu-nbd
    use_chain qcow2
    qemu-img create -q -f qcow2 t.qcow2 32M
    nbd_serve t -f qcow2 t.qcow2
    run -0 --separate-stderr "$PROG" convert -n c/top.qcow2 "$NBD_URI"
    [ -z "$stderr" ] || fail "$stderr"
    server_stop "$NBD_PIDFILE"
    qemu-img compare -q c/top.qcow2 t.qcow2
    qemu-img check -q t.qcow2
}

# refused_self ARGS...: convert ARGS exits 1 with one line, nothing written
refused_self() {
    run --separate-stderr timeout 60 "$PROG" convert "$@"
    [ "$status" -eq 1 ] || { fail "convert $* exited $status: $stderr"; return 1; }
    [ "${#stderr_lines[@]}" -eq 1 ] || { fail "not one line: $stderr"; return 1; }
    [ "$(cksum c/top.qcow2 c/l2.qcow2 c/l1.qcow2 "$BASE")" = "$(cat sums)" ] ||
        { fail "convert $* wrote an image"; return 1; }
}

@test "convert and mirror onto the source itself (a link to it, its backing file, the same NBD export) are refused before anything is written" {
    use_chain qcow2
    cksum c/top.qcow2 c/l2.qcow2 c/l1.qcow2 "$BASE" >sums
    ln c/top.qcow2 hard.qcow2
    ln -s c/top.qcow2 soft.qcow2
    local c
    for c in convert mirror; do
        run -1 --separate-stderr "$PROG" $c -n -O qcow2 c/top.qcow2 c/top.qcow2
        [[ $stderr == *"source 'c/top.qcow2' itself"* ]] || fail "$c: $stderr"
    done
    refused_self -n -O qcow2 c/top.qcow2 c/top.qcow2
    refused_self -O qcow2 c/top.qcow2 c/top.qcow2
    refused_self -O qcow2 c/top.qcow2 ./c/top.qcow2
    refused_self -n -O qcow2 c/top.qcow2 hard.qcow2
    refused_self -O qcow2 c/top.qcow2 hard.qcow2
    refused_self -n -O qcow2 c/top.qcow2 soft.qcow2
    refused_self -O qcow2 c/top.qcow2 soft.qcow2
    refused_self -O qcow2 c/top.qcow2 c/l1.qcow2
    refused_self -n -O qcow2 c/top.qcow2 c/l2.qcow2
    refused_self -O qcow2 "$BASE" c/l1.qcow2 c/top.qcow2 out.qcow2 "$BASE"
    [ ! -e out.qcow2 ]
    run -1 qemu-img convert -n -O qcow2 c/top.qcow2 hard.qcow2
    if command -v qemu-nbd >/dev/null; then
        local u
        nbd_serve self -f qcow2 c/l1.qcow2
        u=$NBD_URI
        cksum c/l1.qcow2 >l1.sum
        run -1 --separate-stderr "$PROG" convert -n "$u" "$u"
        [ "${#stderr_lines[@]}" -eq 1 ] || fail "not one line: $stderr"
        run -1 --separate-stderr "$PROG" mirror -n "$u" "$u"
        [ "${#stderr_lines[@]}" -eq 1 ] || fail "not one line: $stderr"
        server_stop "$NBD_PIDFILE"
        [ "$(cksum c/l1.qcow2)" = "$(cat l1.sum)" ]
    fi
}

@test "convert -p prints qemu-img's progress on stdout; -q none" {
    use_chain qcow2
    run -0 --separate-stderr "$PROG" convert -p c/top.qcow2 p.raw
    [[ $output == *"(100.00/100%)"* ]] || fail "no final percentage: $output"
    rm -f p.raw
    "$PROG" convert -p c/top.qcow2 p.raw >p.out
    qemu-img convert -p c/top.qcow2 q.raw >q.out
    [ "$(tail -c 22 q.out | od -c)" = "$(tail -c 22 p.out | od -c)" ] ||
        fail "the end differs from qemu-img's: $(od -c p.out | tail -3)"
    [ "$(head -c 16 q.out | od -c)" = "$(head -c 16 p.out | od -c)" ] ||
        fail "the start differs from qemu-img's: $(od -c p.out | head -3)"
    rm -f p.raw
    run -0 --separate-stderr "$PROG" convert -p -q c/top.qcow2 p.raw
    [ -z "$output" ]
}

@test "convert -m, -r, -W, -t unsafe, -T and -U copy the same image" {
    use_chain qcow2
    same_as_qemu -r "$V/top.raw" -m 1 -W -O qcow2 c/top.qcow2
    same_as_qemu -r "$V/top.raw" -m 16 -r 1G -t unsafe -T writeback -U c/top.qcow2
    same_as_qemu -r "$V/top.raw" -t writethrough -T unsafe -O qcow2 c/top.qcow2
}

# both_fail STATUS QSTATUS ARGS...: blockctl convert ARGS exits STATUS with
# one line (after argp's own "Try" lines), qemu-img convert ARGS fails
# (it exits 1 for every error), and no OUTPUT is left
both_fail() {
    local st=$1 out
    shift
    out=${!#}
    run --separate-stderr qemu-img convert "$@"
    [ "$status" -ne 0 ] || { fail "qemu-img convert $* succeeded"; return 1; }
    rm -f "$out"
    run --separate-stderr "$PROG" convert "$@"
    [ "$status" -eq "$st" ] || { fail "convert $* exited $status, not $st: $stderr"; return 1; }
    [ -n "$stderr" ] || { fail "convert $*: no message"; return 1; }
    [ ! -e "$out" ] && [ ! -e "$out.part" ] || { fail "convert $* left $out"; return 1; }
}

@test "convert errors: qemu-img's exit status and words, 64 for bad option values" {
    use_chain qcow2
    both_fail 1 nonexist.raw o.raw
    [[ $stderr == *nonexist.raw* ]]
    both_fail 64 -f vmdk c/top.qcow2 o.raw
    [[ $stderr == *"valid: raw, qcow2"* ]]
    both_fail 64 -O bogus c/top.qcow2 o.raw
    [[ $stderr == *"valid: raw, qcow2"* ]]
    both_fail 64 -O qcow2 -o cluster_szie=4k c/top.qcow2 o.qcow2
    [[ $stderr == *cluster_size* ]]
    both_fail 64 -O qcow2 -o cluster_size=3k c/top.qcow2 o.qcow2
    both_fail 64 -O qcow2 -o cluster_size=10Q c/top.qcow2 o.qcow2
    both_fail 64 -O qcow2 -o compression_type=lz4 c/top.qcow2 o.qcow2
    [[ $stderr == *zstd* ]]
    both_fail 64 -B c/l2.qcow2 -F qcow2 c/top.qcow2 o.raw
    [[ $stderr == *"Backing file not supported for file format 'raw'"* ]]
    both_fail 64 -O qcow2 -B c/l2.qcow2 c/top.qcow2 o.qcow2
    [[ $stderr == *"requires explicit backing format"* ]]
    both_fail 64 -c c/top.qcow2 o.raw
    [[ $stderr == *"Compression not supported"* ]]
    both_fail 64 -S 10Q c/top.qcow2 o.raw
    both_fail 64 -S 100 c/top.qcow2 o.raw
    [[ $stderr == *"multiples of 512"* ]]
    both_fail 64 -m 0 c/top.qcow2 o.raw
    both_fail 64 -m 17 c/top.qcow2 o.raw
    [[ $stderr == *"1 to 16"* ]]
    both_fail 64 -r 10Q c/top.qcow2 o.raw
    both_fail 64 -t bogus c/top.qcow2 o.raw
    [[ $stderr == *writeback* ]]
    both_fail 64 -T bogus c/top.qcow2 o.raw
    both_fail 64 --target-is-zero c/top.qcow2 o.raw
    [[ $stderr == *"requires use of -n"* ]]
    both_fail 64 -O qcow2 --skip-broken-bitmaps c/top.qcow2 o.qcow2
    both_fail 64 -O qcow2 --bitmaps c/top.qcow2 c/l1.qcow2 o.qcow2
    [[ $stderr == *"single source"* ]]
    both_fail 64 -O qcow2 -B c/l1.qcow2 -F qcow2 c/top.qcow2 c/l1.qcow2 o.qcow2
    run -1 qemu-img convert c/top.qcow2
    run -64 --separate-stderr "$PROG" convert c/top.qcow2
    [[ $stderr == *"Must specify image file name"* ]]
    qemu-img create -q -f raw e.raw 32M
    run -1 qemu-img convert -n -O raw -o preallocation=full c/top.qcow2 e.raw
    run -64 "$PROG" convert -n -O raw -o preallocation=full c/top.qcow2 e.raw
    both_fail 1 -O raw --bitmaps c/top.qcow2 o.raw
    [[ $stderr == *"does not support bitmaps"* ]] || fail "$stderr"
}

@test "convert -t none / -T directsync (O_DIRECT) give qemu-img's output (tests/interop/cache.bats: every mode)" {
    use_chain qcow2
    qemu-img convert -t none -T directsync -O qcow2 c/top.qcow2 q.qcow2
    run -0 "$PROG" convert -t none -T directsync -O qcow2 c/top.qcow2 o.qcow2
    qemu_same o.qcow2 q.qcow2
    qemu_clean o.qcow2
}

@test "convert -o help lists the options of the output format" {
    run -0 "$PROG" convert -O qcow2 -o help
    [[ $output == *cluster_size* ]]
    run -0 "$PROG" convert -o help
    [[ $output == *preallocation* ]] && [[ $output != *cluster_size* ]]
}

@test "convert -l: an internal snapshot of the source, by name, ID or snapshot.name=, as qemu-img; its errors" {
    use_chain qcow2
    qemu-img convert -O qcow2 c/top.qcow2 sn.qcow2
    qemu-img snapshot -c s1 sn.qcow2
    qio sn.qcow2 'write -P 0x77 0 1M' 'write -z 4M 1M'
    # (s1 is snapshot 1; it reads as top.raw, the image now does not)
    run -1 qemu-img compare -q sn.qcow2 "$V/top.raw"
    local l
    for l in s1 1 snapshot.name=s1 snapshot.id=1; do
        same_as_qemu -r "$V/top.raw" -l "$l" sn.qcow2
        same_as_qemu -r "$V/top.raw" -l "$l" -O qcow2 sn.qcow2
    done
    both_fail 1 -l nosuch sn.qcow2 o.raw
    [ "$stderr" = "blockctl: Failed to load snapshot: Can't find snapshot" ] || fail "$stderr"
    both_fail 1 -f raw -l s1 sn.qcow2 o.raw
    [[ $stderr == *"does not support temporarily loading internal snapshots"* ]] || fail "$stderr"
    both_fail 1 -l snapshot.foo=1 sn.qcow2 o.raw
    [[ $stderr == *"Failed in parsing snapshot param 'snapshot.foo=1'"* ]] || fail "$stderr"
    both_fail 64 -l s1 sn.qcow2 sn.qcow2 o.raw
    [[ $stderr == *"No support for concatenating multiple snapshot"* ]] || fail "$stderr"
}

@test "convert -C: accepted, the same output; refused with -c, -S and --salvage as qemu-img refuses it" {
    use_chain qcow2
    same_as_qemu -r "$V/top.raw" -C c/top.qcow2
    same_as_qemu -r "$V/top.raw" -C -O qcow2 c/top.qcow2
    both_fail 64 -C -c -O qcow2 c/top.qcow2 o.qcow2
    [[ $stderr == *"Cannot enable copy offloading when -c is used"* ]] || fail "$stderr"
    both_fail 64 -C -S 4k c/top.qcow2 o.raw
    [[ $stderr == *"Cannot enable copy offloading when -S is used"* ]] || fail "$stderr"
    both_fail 64 -C --salvage c/top.qcow2 o.raw
    [[ $stderr == *"Cannot use copy offloading in salvaging mode"* ]] || fail "$stderr"
}
