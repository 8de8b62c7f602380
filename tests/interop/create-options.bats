#!/usr/bin/env bats
# Images blockctl creates, with every -o option, pass `qemu-img check`,
# `qemu-img info` shows what was asked, qemu-io can write to them and
# qemu-img check stays clean.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
    mkq base.qcow2 4M
    qio base.qcow2 'write -P 0x01 0 1M' 'write -P 0x02 3M 64k'
    qemu-img create -q -f raw base.raw 3M
    QIO_FMT=raw qio base.raw 'write -P 0x03 0 512k'
}

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
}

# write_some IMG: qemu-io writes of every kind, compressed ones aligned to
# the image's cluster size; the image stays clean and reads back through
# blockctl exactly as qemu-img reads it
write_some() {
    local img=$1 cs size
    cs=$(qemu-img info --output=json "$img" | jq '."cluster-size"')
    size=$(qemu-img info --output=json "$img" | jq '."virtual-size"')
    qio "$img" 'write -P 0x11 0 64k' 'write -P 0x12 100000 300000' \
        'write -z 1M 64k' 'discard 1200k 64k' "write -P 0x13 $((size - 4096)) 4096"
    # compressed writes go to unallocated clusters only
    local off=$((size / 2 / cs * cs))
    if [ "${NO_COMPRESS:-}" != 1 ] && [ "$off" -ge 1572864 ]; then
        qio "$img" "write -c -P 0x14 $off $cs"
    fi
    qemu_clean "$img"
    to_raw "$img" "$img.ref"
    run -0 "$PROG" compare "$img" "$img.ref"
    [ "$output" = "Images are identical." ]
}

# created_as OPTS SIZE JQ_TEST...: blockctl create -o OPTS; qemu-img check
# is clean; every JQ_TEST holds on `qemu-img info --output=json`; the info
# equals that of qemu-img's own create with the same options; qemu-io
# writes keep it clean
created_as() {
    local opts=$1 size=$2 t
    shift 2
    run -0 "$PROG" create -q -f qcow2 ${opts:+-o "$opts"} ours.qcow2 "$size"
    [ -z "$output" ]
    qemu_clean ours.qcow2
    local info
    info=$(qemu-img info --output=json ours.qcow2)
    for t in "$@"; do
        jq -e "$t" <<<"$info" >/dev/null || fail "qemu-img info: '$t' is false in $info"
    done
    qemu-img create -q -f qcow2 ${opts:+-o "$opts"} theirs.qcow2 "$size"
    local a b
    a=$(jq -S 'del(.filename, ."actual-size")' <<<"$info")
    b=$(qemu-img info --output=json theirs.qcow2 | jq -S 'del(.filename, ."actual-size")')
    text_diff "$a" "$b" "qemu-img info of blockctl's vs qemu-img's image ($opts)"
    write_some ours.qcow2
}

@test "create -f qcow2 with no options" {
    created_as "" 64M '."virtual-size" == 67108864' '."cluster-size" == 65536' \
        '."format-specific".data.compat == "1.1"' '."format-specific".data."refcount-bits" == 16'
}

@test "create -o cluster_size=512" {
    created_as cluster_size=512 4M '."cluster-size" == 512'
}

@test "create -o cluster_size=4k" {
    created_as cluster_size=4k 4M '."cluster-size" == 4096'
}

@test "create -o cluster_size=64k" {
    created_as cluster_size=64k 4M '."cluster-size" == 65536'
}

@test "create -o cluster_size=2M" {
    created_as cluster_size=2M 16M '."cluster-size" == 2097152'
}

@test "create -o compat=0.10" {
    created_as compat=0.10 4M '."format-specific".data.compat == "0.10"'
}

@test "create -o compat=1.1" {
    created_as compat=1.1 4M '."format-specific".data.compat == "1.1"'
}

@test "create -o compat=v2 and compat=v3" {
    created_as compat=v2 4M '."format-specific".data.compat == "0.10"'
    rm -f ours.qcow2 theirs.qcow2
    created_as compat=v3 4M '."format-specific".data.compat == "1.1"'
}

@test "create -o lazy_refcounts=on" {
    created_as lazy_refcounts=on 4M '."format-specific".data."lazy-refcounts" == true'
}

@test "create -o lazy_refcounts=off" {
    created_as lazy_refcounts=off 4M '."format-specific".data."lazy-refcounts" == false'
}

@test "create -o extended_l2=on" {
    created_as extended_l2=on 4M '."format-specific".data."extended-l2" == true'
    # qemu-io's subcluster writes stay clean too
    qio ours.qcow2 'write -P 7 2k 2k' 'write -z 70k 2k' 'discard 130k 2k'
    qemu_clean ours.qcow2
}

@test "create -o extended_l2=on,cluster_size=16k" {
    created_as extended_l2=on,cluster_size=16k 4M '."format-specific".data."extended-l2" == true' \
        '."cluster-size" == 16384'
}

@test "create -o refcount_bits=1" {
    created_as refcount_bits=1 4M '."format-specific".data."refcount-bits" == 1'
}

@test "create -o refcount_bits=8" {
    created_as refcount_bits=8 4M '."format-specific".data."refcount-bits" == 8'
}

@test "create -o refcount_bits=64" {
    created_as refcount_bits=64 4M '."format-specific".data."refcount-bits" == 64'
}

@test "create -o compression_type=zlib" {
    created_as compression_type=zlib 4M '."format-specific".data."compression-type" == "zlib"'
}

@test "create -o compression_type=zstd" {
    created_as compression_type=zstd 4M '."format-specific".data."compression-type" == "zstd"'
}

@test "create -o cluster_size=2M,extended_l2=on,compression_type=zstd" {
    created_as cluster_size=2M,extended_l2=on,compression_type=zstd 16M \
        '."cluster-size" == 2097152' '."format-specific".data."extended-l2" == true' \
        '."format-specific".data."compression-type" == "zstd"'
}

@test "create -o cluster_size=512,lazy_refcounts=on,refcount_bits=1" {
    created_as cluster_size=512,lazy_refcounts=on,refcount_bits=1 4M \
        '."cluster-size" == 512' '."format-specific".data."lazy-refcounts" == true' \
        '."format-specific".data."refcount-bits" == 1'
}

@test "create -o preallocation=off" {
    created_as preallocation=off 8M '."actual-size" < 1048576'
}

@test "create -o preallocation=metadata: every cluster is mapped, as qemu-img maps it" {
    run -0 "$PROG" create -q -f qcow2 -o preallocation=metadata ours.qcow2 8M
    qemu_clean ours.qcow2
    qemu-img create -q -f qcow2 -o preallocation=metadata theirs.qcow2 8M
    local a b
    a=$(qemu-img map --output=json ours.qcow2 | jq -c 'map(del(.offset))')
    b=$(qemu-img map --output=json theirs.qcow2 | jq -c 'map(del(.offset))')
    text_diff "$a" "$b" "qemu-img map (offsets aside)"
    # every extent has a host offset
    qemu-img map --output=json ours.qcow2 | jq -e 'all(has("offset"))'
    NO_COMPRESS=1 write_some ours.qcow2
}

@test "create -o preallocation=falloc: the file is allocated" {
    run -0 "$PROG" create -q -f qcow2 -o preallocation=falloc ours.qcow2 8M
    qemu_clean ours.qcow2
    qemu-img info --output=json ours.qcow2 | jq -e '."actual-size" >= 8388608'
    [ "$(fsize ours.qcow2)" -ge 8388608 ]
    qemu-img create -q -f qcow2 -o preallocation=falloc theirs.qcow2 8M
    local a b
    a=$(qemu-img map --output=json ours.qcow2 | jq -c 'map(del(.offset))')
    b=$(qemu-img map --output=json theirs.qcow2 | jq -c 'map(del(.offset))')
    text_diff "$a" "$b" "qemu-img map (offsets aside)"
    NO_COMPRESS=1 write_some ours.qcow2
}

@test "create -o preallocation=full: the file is written" {
    run -0 "$PROG" create -q -f qcow2 -o preallocation=full ours.qcow2 8M
    qemu_clean ours.qcow2
    qemu-img info --output=json ours.qcow2 | jq -e '."actual-size" >= 8388608'
    qemu-img create -q -f qcow2 -o preallocation=full theirs.qcow2 8M
    local a b
    a=$(qemu-img map --output=json ours.qcow2 | jq -c 'map(del(.offset))')
    b=$(qemu-img map --output=json theirs.qcow2 | jq -c 'map(del(.offset))')
    text_diff "$a" "$b" "qemu-img map (offsets aside)"
    NO_COMPRESS=1 write_some ours.qcow2
}

@test "create -f raw -o preallocation=full and falloc" {
    run -0 "$PROG" create -q -f raw -o preallocation=full full.raw 1M
    [ "$(fsize full.raw)" -eq 1048576 ]
    [ "$(stat -c %b full.raw)" -ge 2048 ]
    run -0 "$PROG" create -q -f raw -o preallocation=falloc falloc.raw 1M
    [ "$(fsize falloc.raw)" -eq 1048576 ]
    [ "$(stat -c %b falloc.raw)" -ge 2048 ]
}

@test "create -b qcow2 -F qcow2 takes the backing file's size" {
    run -0 "$PROG" create -q -f qcow2 -b "$BATS_FILE_TMPDIR/base.qcow2" -F qcow2 ov.qcow2
    qemu_clean ov.qcow2
    local info
    info=$(qemu-img info --output=json ov.qcow2)
    jq -e --arg b "$BATS_FILE_TMPDIR/base.qcow2" \
        '."virtual-size" == 4194304 and ."backing-filename" == $b and ."backing-filename-format" == "qcow2"' <<<"$info"
    # reads fall through to the backing file
    qemu_same ov.qcow2 "$BATS_FILE_TMPDIR/base.qcow2"
    qio ov.qcow2 'write -P 0x21 512k 64k' 'write -z 0 64k'
    qemu_clean ov.qcow2
    to_raw ov.qcow2 ov.ref
    run -0 "$PROG" compare ov.qcow2 ov.ref
}

@test "create -b relative -F qcow2 resolves against the overlay's folder" {
    mkdir sub
    cp "$BATS_FILE_TMPDIR/base.qcow2" sub/base.qcow2
    run -0 "$PROG" create -q -f qcow2 -b base.qcow2 -F qcow2 sub/ov.qcow2
    qemu_clean sub/ov.qcow2
    qemu-img info --output=json sub/ov.qcow2 |
        jq -e '."backing-filename" == "base.qcow2" and ."full-backing-filename" == "sub/base.qcow2" and ."virtual-size" == 4194304'
    qemu_same sub/ov.qcow2 sub/base.qcow2
}

@test "create -b -F qcow2 with a larger size" {
    run -0 "$PROG" create -q -f qcow2 -b "$BATS_FILE_TMPDIR/base.qcow2" -F qcow2 ov.qcow2 16M
    qemu_clean ov.qcow2
    qemu-img info --output=json ov.qcow2 | jq -e '."virtual-size" == 16777216'
    write_some ov.qcow2
}

@test "create -b raw -F raw" {
    run -0 "$PROG" create -q -f qcow2 -b "$BATS_FILE_TMPDIR/base.raw" -F raw ov.qcow2
    qemu_clean ov.qcow2
    qemu-img info --output=json ov.qcow2 |
        jq -e '."virtual-size" == 3145728 and ."backing-filename-format" == "raw"'
    qemu_same ov.qcow2 "$BATS_FILE_TMPDIR/base.raw"
    write_some ov.qcow2
}

@test "create -o compat=0.10 -b -F qcow2" {
    run -0 "$PROG" create -q -f qcow2 -o compat=0.10 -b "$BATS_FILE_TMPDIR/base.qcow2" -F qcow2 ov.qcow2
    qemu_clean ov.qcow2
    qemu-img info --output=json ov.qcow2 |
        jq -e '."format-specific".data.compat == "0.10" and ."backing-filename-format" == "qcow2"'
    qemu_same ov.qcow2 "$BATS_FILE_TMPDIR/base.qcow2"
    write_some ov.qcow2
}

@test "create -u -b MISSING -F qcow2 SIZE records the backing file" {
    run -0 "$PROG" create -q -f qcow2 -u -b missing.qcow2 -F qcow2 ov.qcow2 4M
    qemu-img info --output=json ov.qcow2 |
        jq -e '."backing-filename" == "missing.qcow2" and ."backing-filename-format" == "qcow2" and ."virtual-size" == 4194304'
    qemu-img check -U ov.qcow2 >/dev/null 2>&1 || true
    # once the backing file exists, the image is clean and usable
    cp "$BATS_FILE_TMPDIR/base.qcow2" missing.qcow2
    qemu_clean ov.qcow2
    qemu_same ov.qcow2 missing.qcow2
}

@test "create -f qcow2 of 1 TiB (2048 L1 entries) is clean" {
    run -0 "$PROG" create -q -f qcow2 big.qcow2 1T
    qemu_clean big.qcow2
    qemu-img info --output=json big.qcow2 | jq -e '."virtual-size" == 1099511627776'
    qio big.qcow2 'write -P 1 1099511562240 64k' 'write -P 2 549755813888 4k'
    qemu_clean big.qcow2
    qemu-img info --output=json big.qcow2 | jq -e '."virtual-size" == 1099511627776'
    to_raw big.qcow2 big.ref
    run -0 "$PROG" compare big.qcow2 big.ref
    qio big.qcow2 'write -P 3 549755813888 1'
    run -1 "$PROG" compare big.qcow2 big.ref
    [ "$output" = "Content mismatch at offset 549755813888!" ]
}

@test "create -o cluster_size=512 of 1 GiB (L1 over several refcount blocks) is clean" {
    run -0 "$PROG" create -q -f qcow2 -o cluster_size=512 big.qcow2 1G
    qemu_clean big.qcow2
    qio big.qcow2 'write -P 1 0 64k' 'write -P 2 1073676288 64k'
    qemu_clean big.qcow2
    to_raw big.qcow2 big.ref
    run -0 "$PROG" compare big.qcow2 big.ref
}

@test "create -f raw rounds the size up to 512 as qemu-img does" {
    local s
    for s in 1 1000 1024 123456789 0; do
        rm -f ours.raw theirs.raw
        run -0 "$PROG" create -q -f raw ours.raw "$s"
        qemu-img create -q -f raw theirs.raw "$s"
        [ "$(fsize ours.raw)" -eq "$(fsize theirs.raw)" ] ||
            fail "size $s: blockctl made $(fsize ours.raw) bytes, qemu-img $(fsize theirs.raw)"
    done
}

@test "create -f qcow2 with unaligned sizes: qemu-img sees the size its own create gives" {
    local s a b
    for s in 1000 5000000 1.5M 0x10000 0; do
        rm -f ours.qcow2 theirs.qcow2
        run -0 "$PROG" create -q -f qcow2 ours.qcow2 "$s"
        qemu-img create -q -f qcow2 theirs.qcow2 "$s"
        a=$(qemu-img info --output=json ours.qcow2 | jq '."virtual-size"')
        b=$(qemu-img info --output=json theirs.qcow2 | jq '."virtual-size"')
        [ "$a" = "$b" ] || fail "size $s: qemu-img info says $a, $b for its own image"
        # and blockctl reports what qemu-img reports, for both files
        qemu_info_equal ours.qcow2
        qemu_info_equal theirs.qcow2
        qemu_clean ours.qcow2
    done
}

# The "Formatting" line is qemu-img's, byte for byte
@test "create prints qemu-img's Formatting line for every option set" {
    local opts errs=0 a b
    mkdir ours theirs
    cp "$BATS_FILE_TMPDIR/base.qcow2" ours/bk.qcow2
    cp "$BATS_FILE_TMPDIR/base.qcow2" theirs/bk.qcow2
    while IFS='|' read -r opts size; do
        rm -f ours/x.img theirs/x.img
        # shellcheck disable=SC2086
        a=$(cd ours && "$PROG" create $opts x.img $size 2>&1) || true
        # shellcheck disable=SC2086
        b=$(cd theirs && qemu-img create $opts x.img $size 2>&1) || true
        if [ "$a" != "$b" ]; then
            printf 'create %s x.img %s:\n  blockctl: %s\n  qemu-img: %s\n' "$opts" "$size" "$a" "$b" >&2
            errs=$((errs + 1))
        fi
    done <<'EOF'
-f raw|64M
-f raw|1000
-f qcow2|64M
-f qcow2|1.5M
-f qcow2|1000
-f qcow2 -o cluster_size=512,lazy_refcounts=on,refcount_bits=1|4M
-f qcow2 -o cluster_size=2M,extended_l2=on,compression_type=zstd|16M
-f qcow2 -o compat=0.10|4M
-f qcow2 -o compat=v3|4M
-f qcow2 -o preallocation=metadata|4M
-f qcow2 -o lazy_refcounts=on|4M
-f qcow2 -o cluster_size=64K|4M
-f qcow2 -b bk.qcow2 -F qcow2|
-f qcow2 -b bk.qcow2 -F qcow2|8M
-f qcow2 -b bk.qcow2 -F raw|
EOF
    [ "$errs" -eq 0 ]
}

@test "invalid -o values are refused as qemu-img refuses them (exit 64: a usage error)" {
    local opts errs=0 rc1 rc2
    while IFS= read -r opts; do
        rm -f x.qcow2
        rc1=0 rc2=0
        "$PROG" create -q -f qcow2 -o "$opts" x.qcow2 4M >/dev/null 2>&1 || rc1=$?
        rm -f x.qcow2
        qemu-img create -q -f qcow2 -o "$opts" x.qcow2 4M >/dev/null 2>&1 || rc2=$?
        [ "$rc2" -eq 1 ]
        if [ "$rc1" -ne 64 ] || [ -e x.qcow2 ]; then
            printf -- '-o %s: blockctl exited %d, qemu-img %d\n' "$opts" "$rc1" "$rc2" >&2
            errs=$((errs + 1))
        fi
    done <<'EOF'
cluster_size=1000
cluster_size=256
cluster_size=4M
refcount_bits=3
refcount_bits=128
compat=0.10,lazy_refcounts=on
compat=0.10,refcount_bits=1
compat=0.10,compression_type=zstd
compat=0.10,extended_l2=on
compat=1.2
extended_l2=on,cluster_size=4k
compression_type=lz4
lazy_refcounts=maybe
foo=bar
preallocation=bogus
EOF
    [ "$errs" -eq 0 ]
}
