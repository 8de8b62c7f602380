#!/usr/bin/env bats
# Malformed qcow2 headers and tables: info, map, check and compare end by
# themselves (no signal, no hang, no absurd allocation) with a short error
# naming the file.  Under `make asan` PROG is the sanitizer build, so any
# memory error fails these tests too.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

# copied OFF: an L1/L2 entry for OFF with OFLAG_COPIED (unsigned decimal)
copied() { printf '%u' $(((1 << 63) | $1)); }

# mk NAME [SOURCE]: a copy of good.qcow2 (or SOURCE) to break
mk() { cp "${2:-good.qcow2}" "$1.qcow2"; }

# set_backing IMG NAME: overwrite the backing file name stored in IMG
set_backing() {
    local off
    off=$(qedit "$1" get backing_file_offset)
    printf '%s' "$2" | dd of="$1" bs=1 seek="$off" conv=notrunc status=none
    qedit "$1" set backing_file_size "${#2}"
}

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

    # header fields
    mk magic; qedit magic.qcow2 set magic 0x12345678
    mk v1; qedit v1.qcow2 set version 1
    mk v4; qedit v4.qcow2 set version 4
    mk cb8; qedit cb8.qcow2 set cluster_bits 8
    mk cb22; qedit cb22.qcow2 set cluster_bits 22
    mk cb63; qedit cb63.qcow2 set cluster_bits 63
    mk sizehuge; qedit sizehuge.qcow2 set size 0x7fffffffffffffff
    mk l1huge; qedit l1huge.qcow2 set l1_size 0x7fffffff
    mk l1big; qedit l1big.qcow2 set l1_size 0x2000000
    mk l1small; qedit l1small.qcow2 set size 0x100000000000
    mk l1unal; qedit l1unal.qcow2 set l1_table_offset 0x30001
    mk l1eof; qedit l1eof.qcow2 set l1_table_offset 0x100000000
    mk l1wrap; qedit l1wrap.qcow2 set l1_table_offset 0xffffffffffff0000
    mk rtunal; qedit rtunal.qcow2 set refcount_table_offset 0x10200
    mk rteof; qedit rteof.qcow2 set refcount_table_offset 0x100000000
    mk rtzero; qedit rtzero.qcow2 set refcount_table_offset 0
    mk rtchuge; qedit rtchuge.qcow2 set refcount_table_clusters 0xffffff
    mk rtc0; qedit rtc0.qcow2 set refcount_table_clusters 0
    mk ro7; qedit ro7.qcow2 set refcount_order 7
    mk ro32; qedit ro32.qcow2 set refcount_order 32
    mk hl100; qedit hl100.qcow2 set header_length 100
    mk hlbig; qedit hlbig.qcow2 set header_length 0x20000
    mk hlodd; qedit hlodd.qcow2 set header_length 105
    mk incomp; qedit incomp.qcow2 set incompatible_features 0x20
    mk incomp63; qedit incomp63.qcow2 set incompatible_features 0x8000000000000000
    mk crypt1; qedit crypt1.qcow2 set crypt_method 1
    mk crypt2; qedit crypt2.qcow2 set crypt_method 2
    mk crypt9; qedit crypt9.qcow2 set crypt_method 9
    mk datafile; qedit datafile.qcow2 set incompatible_features 4
    mk ctype; qedit ctype.qcow2 set incompatible_features 8; qedit ctype.qcow2 u8 104 2
    mk ctypenobit; qedit ctypenobit.qcow2 u8 104 1
    head -c 50 good.qcow2 >trunc.qcow2
    head -c 104 good.qcow2 >hdronly.qcow2
    : >empty.qcow2

    # header extensions
    mk extlen; qedit extlen.qcow2 extlen feature_table 0x20000
    mk extlen2; qedit extlen2.qcow2 extlen feature_table 0xfffffff8
    mk bmlen bm.qcow2; qedit bmlen.qcow2 extlen bitmaps 8
    mk bmdir bm.qcow2; qedit bmdir.qcow2 bmdir-set offset 0x100000000
    mk bmdirunal bm.qcow2; qedit bmdirunal.qcow2 bmdir-set offset 0x10004
    mk bmdirsize bm.qcow2; qedit bmdirsize.qcow2 bmdir-set size 0x7fffffff
    mk bmnb bm.qcow2; qedit bmnb.qcow2 bmdir-set nb 0x7fffffff
    mk bmnb0 bm.qcow2; qedit bmnb0.qcow2 bmdir-set nb 0

    # snapshot table
    mk snapoff snap.qcow2; qedit snapoff.qcow2 set snapshots_offset 0x12345
    mk snapeof snap.qcow2; qedit snapeof.qcow2 set snapshots_offset 0x100000000
    mk snapnb snap.qcow2; qedit snapnb.qcow2 set nb_snapshots 0x7fffffff
    mk snapnb2 snap.qcow2; qedit snapnb2.qcow2 set nb_snapshots 2

    # backing file name
    mk bfoeof ov.qcow2; qedit bfoeof.qcow2 set backing_file_offset 0x100000000
    mk bfsbig ov.qcow2; qedit bfsbig.qcow2 set backing_file_size 0x10000
    mk bfsover ov.qcow2; qedit bfsover.qcow2 set backing_file_offset 0xfffc
    mk selfback ov.qcow2; set_backing selfback.qcow2 selfback.qcow2
    mk jsonback ov.qcow2
    set_backing jsonback.qcow2 'json:{"file":{"driver":"file","filename":"good.qcow2"}}'

    # tables: L1 / L2 entries, compressed descriptors, refcount blocks
    mk l2eof; qedit l2eof.qcow2 l2 0 "$(copied 0x10000000)"
    mk l1entryeof; qedit l1entryeof.qcow2 l1 0 "$(copied 0x10000000)"
    mk l1entryunal; qedit l1entryunal.qcow2 l1 0 "$(copied 0x40200)"
    mk compeof
    local h
    h=$(qedit compeof.qcow2 l2 131072)
    # keep the flag and size bits (62..), point the data at 4 GiB
    qedit compeof.qcow2 l2 131072 "$(printf '%u' $(((h & ~((1 << 62) - 1)) | 0x100000000)))"
    mk compbig
    h=$(qedit compbig.qcow2 l2 131072)
    # the largest sector count the descriptor can hold (64k clusters: 8 bits
    # of sectors above the 54-bit offset)
    qedit compbig.qcow2 l2 131072 "$(printf '%u' $((h | (0xff << 54))))"
    mk rbeof; qedit rbeof.qcow2 rtentry 0 0x10000000
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
@test "L1 table offset past EOF" { rejected l1eof; }
@test "L1 table offset wrapping around 2^64" { rejected l1wrap; }
@test "refcount table offset unaligned" { rejected rtunal; }
@test "refcount table offset past EOF" { rejected rteof; }
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
@test "file of 104 bytes (header only)" { rejected hdronly; }
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
