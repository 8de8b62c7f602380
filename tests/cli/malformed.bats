#!/usr/bin/env bats
# Malformed qcow2 headers and tables: info, map, check and compare end by
# themselves (no signal, no hang, no absurd allocation) with a short error
# naming the file.  Under `make asan` PROG is the sanitizer build, so any
# memory error fails these tests too.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_cmd qemu-img qemu-io python3
    cd "$BATS_FILE_TMPDIR" || return 1

    # good.qcow2: 64k clusters; L1 @0x30000, L2 @0x40000; guest 0 data,
    # guest 128k compressed, guest 256k data
    mkq good.qcow2 1M
    qio good.qcow2 'write -P 1 0 64k' 'write -c -P 2 128k 64k' 'write -P 3 256k 64k'
    to_raw good.qcow2 good.raw
    mkq snap.qcow2 1M
    qio snap.qcow2 'write -P 1 0 64k'
    qemu-img snapshot -c s1 snap.qcow2
    mkq bm.qcow2 1M
    qemu-img bitmap --add bm.qcow2 b0
    qemu-img create -q -f qcow2 -b good.qcow2 -F qcow2 ov.qcow2
    head -c 50 good.qcow2 >trunc.qcow2
    head -c 104 good.qcow2 >hdronly.qcow2
    : >empty.qcow2

    # each line: NAME SOURCE EDITS (qcow2edit.py commands, joined by +)
    local name src edits
    while read -r name src edits; do
        [ -n "$name" ] || continue
        cp "$src.qcow2" "$name.qcow2"
        echo "$name.qcow2 $edits"
    done <<'CASES' | qedit_batch
magic good set magic 0x12345678
v1 good set version 1
v4 good set version 4
cb8 good set cluster_bits 8
cb22 good set cluster_bits 22
cb63 good set cluster_bits 63
sizehuge good set size 0x7fffffffffffffff
l1huge good set l1_size 0x7fffffff
l1big good set l1_size 0x2000000
l1small good set size 0x100000000000
l1unal good set l1_table_offset 0x30001
l1eof good set l1_table_offset 0x100000000
l1wrap good set l1_table_offset 0xffffffffffff0000
rtunal good set refcount_table_offset 0x10200
rteof good set refcount_table_offset 0x100000000
rtzero good set refcount_table_offset 0
rtchuge good set refcount_table_clusters 0xffffff
rtc0 good set refcount_table_clusters 0
ro7 good set refcount_order 7
ro32 good set refcount_order 32
hl100 good set header_length 100
hlbig good set header_length 0x20000
hlodd good set header_length 105
incomp good set incompatible_features 0x20
incomp63 good set incompatible_features 0x8000000000000000
crypt1 good set crypt_method 1
crypt2 good set crypt_method 2
crypt9 good set crypt_method 9
datafile good set incompatible_features 4
ctype good set incompatible_features 8 + u8 104 2
ctypenobit good u8 104 1
extlen good extlen feature_table 0x20000
extlen2 good extlen feature_table 0xfffffff8
bmlen bm extlen bitmaps 8
bmdir bm bmdir-set offset 0x100000000
bmdirunal bm bmdir-set offset 0x10004
bmdirsize bm bmdir-set size 0x7fffffff
bmnb bm bmdir-set nb 0x7fffffff
bmnb0 bm bmdir-set nb 0
snapoff snap set snapshots_offset 0x12345
snapeof snap set snapshots_offset 0x100000000
snapnb snap set nb_snapshots 0x7fffffff
snapnb2 snap set nb_snapshots 2
bfoeof ov set backing_file_offset 0x100000000
bfsbig ov set backing_file_size 0x10000
bfsover ov set backing_file_offset 0xfffc
selfback ov backing selfback.qcow2
jsonback ov backing 'json:{"file":{"driver":"file","filename":"good.qcow2"}}'
l2eof good l2 0 0x8000000010000000
l1entryeof good l1 0 0x8000000010000000
l1entryunal good l1 0 0x8000000000040200
compeof good l2desc 131072 0x100000000
compbig good l2or 131072 0x3fc0000000000000
rbeof good rtentry 0 0x10000000
CASES
}

setup() {
    requires_cmd qemu-img python3
    cd "$BATS_FILE_TMPDIR" || return 1
}

# rejected NAME: info, map, check and compare all fail cleanly
rejected() {
    local f=$1.qcow2 errs=0 what
    for what in info map check compare; do
        case $what in
        info) run_guarded "$PROG" info -f qcow2 "$f" ;;
        map) run_guarded "$PROG" map -f qcow2 --output=json "$f" ;;
        check) run_guarded "$PROG" check -f qcow2 "$f" ;;
        compare) run_guarded "$PROG" compare -f qcow2 -F raw "$f" good.raw ;;
        esac
        if ! assert_clean_failure "$f"; then
            echo "  ... in blockctl $what (exit $status)" >&2
            errs=$((errs + 1))
        fi
    done
    # compare with the broken image second, so the error comes from -F
    run_guarded "$PROG" compare -f raw -F qcow2 good.raw "$f"
    assert_clean_failure "$f" || { echo "  ... in blockctl compare (second)" >&2; errs=$((errs + 1)); }
    [ "$errs" -eq 0 ]
}

# exits_as_qemu CMD FILE: blockctl CMD -f qcow2 FILE exits as qemu-img CMD
# does (said on stderr when not)
exits_as_qemu() {
    local want=0
    timeout 30 qemu-img "$1" -f qcow2 "$2" >/dev/null 2>&1 || want=$?
    run_guarded "$PROG" "$1" -f qcow2 "$2"
    [ "$status" -eq "$want" ] ||
        { echo "  ... blockctl $1 exits $status, qemu-img $1 $want" >&2; return 1; }
}

# opened_by_check NAME: map and compare fail cleanly, info ends as qemu-img
# info does (it reads no table past the header: tables past the end read
# as zeroes there), and check opens the image anyway and ends as qemu-img
# check does (same exit status)
opened_by_check() {
    local f=$1.qcow2 errs=0 what
    exits_as_qemu info "$f" || errs=$((errs + 1))
    for what in map compare; do
        case $what in
        map) run_guarded "$PROG" map -f qcow2 --output=json "$f" ;;
        compare) run_guarded "$PROG" compare -f qcow2 -F raw "$f" good.raw ;;
        esac
        if ! assert_clean_failure "$f"; then
            echo "  ... in blockctl $what (exit $status)" >&2
            errs=$((errs + 1))
        fi
    done
    exits_as_qemu check "$f" || errs=$((errs + 1))
    [ "$errs" -eq 0 ]
}

# table_damage NAME: info succeeds (the header is fine, as qemu-img says
# too); map and compare either work or fail cleanly; check ends as
# qemu-img check does
table_damage() {
    local f=$1.qcow2 want=0 errs=0
    run_guarded "$PROG" info -f qcow2 "$f"
    [ "$status" -eq 0 ] || { echo "info exited $status: $stderr" >&2; errs=$((errs + 1)); }
    run_guarded "$PROG" map -f qcow2 --output=json "$f"
    if [ "$status" -ne 0 ]; then
        assert_clean_failure "$f" || { echo "  ... in map" >&2; errs=$((errs + 1)); }
    fi
    run_guarded "$PROG" compare -f qcow2 -F raw "$f" good.raw
    if [ "$status" -ne 0 ]; then
        assert_no_crash || { echo "  ... in compare" >&2; errs=$((errs + 1)); }
        if [ "$status" -ge 2 ]; then
            assert_clean_failure "$f" || { echo "  ... in compare" >&2; errs=$((errs + 1)); }
        fi
    fi
    qemu-img check -f qcow2 "$f" >/dev/null 2>&1 || want=$?
    run_guarded "$PROG" check -f qcow2 "$f"
    assert_no_crash || { echo "  ... in check" >&2; errs=$((errs + 1)); }
    [ "$status" -eq "$want" ] || { echo "check exited $status, qemu-img check $want" >&2; errs=$((errs + 1)); }
    [ "$errs" -eq 0 ]
}

@test "sanity: the unbroken images work under the same guards" {
    local f
    for f in good snap bm ov; do
        run_guarded "$PROG" info -f qcow2 "$f.qcow2"
        [ "$status" -eq 0 ] || fail "info $f: $stderr"
        run_guarded "$PROG" map -f qcow2 --output=json "$f.qcow2"
        [ "$status" -eq 0 ] || fail "map $f: $stderr"
        run_guarded "$PROG" check -f qcow2 "$f.qcow2"
        [ "$status" -eq 0 ] || fail "check $f: $stderr"
    done
    run_guarded "$PROG" compare -f qcow2 -F raw good.qcow2 good.raw
    [ "$status" -eq 0 ]
}

@test "bad magic" { rejected magic; }
@test "version 1" { rejected v1; }
@test "version 4" { rejected v4; }
@test "cluster_bits 8" { rejected cb8; }
@test "cluster_bits 22" { rejected cb22; }
@test "cluster_bits 63" { rejected cb63; }
@test "virtual size 2^63-1" { rejected sizehuge; }
@test "l1_size 2^31-1" { rejected l1huge; }
@test "l1_size 2^25 (past the end of the file)" { rejected l1big; }
@test "l1_size too small for the virtual size" { rejected l1small; }
@test "L1 table offset unaligned" { rejected l1unal; }
@test "L1 table offset past EOF" { opened_by_check l1eof; }
@test "L1 table offset wrapping around 2^64" { rejected l1wrap; }
@test "refcount table offset unaligned" { rejected rtunal; }
@test "refcount table offset past EOF" { opened_by_check rteof; }
@test "refcount table offset zero" { rejected rtzero; }
@test "refcount_table_clusters huge" { rejected rtchuge; }
@test "refcount_table_clusters zero" { rejected rtc0; }
@test "refcount_order 7" { rejected ro7; }
@test "refcount_order 32" { rejected ro32; }
@test "header_length < 104" { rejected hl100; }
@test "header_length > cluster size" { rejected hlbig; }
@test "unknown incompatible feature bit 5" { rejected incomp; }
@test "unknown incompatible feature bit 63" { rejected incomp63; }
@test "encryption: AES (crypt_method 1)" { rejected crypt1; }
@test "encryption: LUKS (crypt_method 2) without its extension" { rejected crypt2; }
@test "encryption: unknown crypt_method" { rejected crypt9; }
@test "external data file bit" { rejected datafile; }
@test "unknown compression type" { rejected ctype; }
@test "compression type zstd without the incompatible bit" { rejected ctypenobit; }
@test "file truncated inside the header" { rejected trunc; }
@test "file of 104 bytes (header only)" { opened_by_check hdronly; }
@test "empty file opened as qcow2" { rejected empty; }
@test "extension length past the header cluster" { rejected extlen; }
@test "extension length near 2^32" { rejected extlen2; }
@test "bitmaps extension with a bad length" { rejected bmlen; }
@test "bitmaps directory offset past EOF" { rejected bmdir; }
@test "bitmaps directory offset unaligned" { rejected bmdirunal; }
@test "bitmaps directory size huge" { rejected bmdirsize; }
@test "bitmaps: nb_bitmaps huge" { rejected bmnb; }
@test "bitmaps: nb_bitmaps 0 with a directory" { rejected bmnb0; }
@test "snapshot table offset unaligned" { rejected snapoff; }
@test "snapshot table offset past EOF" { rejected snapeof; }
@test "nb_snapshots huge" { rejected snapnb; }
@test "backing file name offset past EOF" { rejected bfoeof; }
@test "backing file name size 64k" { rejected bfsbig; }
@test "backing file name crossing the header cluster" { rejected bfsover; }

@test "header_length not a multiple of 8 is accepted or refused cleanly" {
    run_guarded "$PROG" info -f qcow2 hlodd.qcow2
    [ "$status" -eq 0 ] || assert_clean_failure hlodd.qcow2
}

@test "nb_snapshots larger than the table holds is refused or read cleanly" {
    run_guarded "$PROG" info -f qcow2 snapnb2.qcow2
    [ "$status" -eq 0 ] || assert_clean_failure snapnb2.qcow2
    run_guarded "$PROG" check -f qcow2 snapnb2.qcow2
    assert_no_crash
}

@test "L2 entry past EOF" { table_damage l2eof; }
@test "L2 table (L1 entry) past EOF" { table_damage l1entryeof; }
@test "L2 table (L1 entry) unaligned" { table_damage l1entryunal; }
@test "compressed descriptor past EOF" { table_damage compeof; }
@test "compressed descriptor with the largest sector count" { table_damage compbig; }
@test "refcount block past EOF" { table_damage rbeof; }

@test "backing file that is the image itself: no hang, a clear error" {
    run_guarded "$PROG" info -f qcow2 selfback.qcow2
    [ "$status" -eq 0 ] || assert_clean_failure selfback.qcow2
    run_guarded "$PROG" info -f qcow2 --backing-chain selfback.qcow2
    assert_clean_failure selfback.qcow2
    run_guarded "$PROG" map -f qcow2 --output=json selfback.qcow2
    assert_clean_failure selfback.qcow2
    run_guarded "$PROG" compare -f qcow2 -F raw selfback.qcow2 good.raw
    assert_clean_failure selfback.qcow2
}

@test "json: backing file names are refused" {
    run_guarded "$PROG" map -f qcow2 --output=json jsonback.qcow2
    assert_clean_failure jsonback.qcow2
    [[ $stderr == *json:* ]]
    run_guarded "$PROG" compare -f qcow2 -F raw jsonback.qcow2 good.raw
    assert_clean_failure jsonback.qcow2
}

@test "the error names the broken field" {
    run_guarded "$PROG" info -f qcow2 cb22.qcow2
    [[ $stderr == *cluster* ]]
    run_guarded "$PROG" info -f qcow2 ro7.qcow2
    [[ $stderr == *refcount* ]]
    run_guarded "$PROG" info -f qcow2 l1huge.qcow2
    [[ $stderr == *L1* ]]
    run_guarded "$PROG" info -f qcow2 snapnb.qcow2
    [[ $stderr == *snapshot* ]]
    run_guarded "$PROG" info -f qcow2 crypt1.qcow2
    [[ $stderr == *ncrypt* ]]
    run_guarded "$PROG" info -f qcow2 datafile.qcow2
    [[ $stderr == *data* ]]
}

@test "probing: a file with a bad magic is raw, as qemu-img says" {
    run -0 qemu-img info --output=json magic.qcow2
    local want
    want=$(jq -r .format <<<"$output")
    run -0 "$PROG" info --output=json magic.qcow2
    [ "$(jq -r .format <<<"$output")" = "$want" ]
}

@test "check -r all on broken headers fails cleanly and leaves the file alone" {
    local n
    for n in cb22 l1huge rtchuge ro7 hlbig incomp snapnb bmdirsize extlen; do
        cp "$n.qcow2" "$BATS_TEST_TMPDIR/x.qcow2"
        run_guarded "$PROG" check -r all -f qcow2 "$BATS_TEST_TMPDIR/x.qcow2"
        assert_clean_failure x.qcow2 || fail "  ... case $n"
        cmp "$n.qcow2" "$BATS_TEST_TMPDIR/x.qcow2" || fail "check -r all changed $n"
    done
}
