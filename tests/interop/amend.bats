#!/usr/bin/env bats
# blockctl amend against qemu-img amend 7.2: from the same image, the same
# exit code and messages, an image qemu-img check finds clean, the same
# qemu-img info fields and the same guest data (snapshots included); and a
# refcount width change or a downgrade killed or failed at any write or
# sync leaves an image qemu-img check accepts (leaks at most) that reads
# as before.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
}

# snap_raw IMG SNAP OUT: the guest data of internal snapshot SNAP
snap_raw() {
    qemu-img convert -O raw -l "snapshot.name=$2" "$1" "$3"
}

# info_of IMG: qemu-img info's fields that amend decides
info_of() {
    qemu-img info --output=json "$1" | jq -S 'del(.filename, ."actual-size", ."dirty-flag",
        .snapshots[]?."date-sec", .snapshots[]?."date-nsec")'
}

# amend_like_qemu SRC OPTS [ARGS...]: qemu-img amend and blockctl amend on
# copies of SRC: same exit status and stderr (program names aside), then
# (whatever the status) qemu-img check clean for ours, the same info, the
# same guest data and snapshots' data.  With USAGE=1: a usage error, exit
# 64 where qemu-img exits 1, its message with "(valid: ...)" added where
# qemu-img does not say what is valid
amend_like_qemu() {
    local src=$1 opts=$2 qrc=0 brc=0 qe be want
    shift 2
    cp "$src" q.qcow2
    cp "$src" b.qcow2
    qemu-img amend "$@" ${opts:+-o "$opts"} q.qcow2 >q.out 2>q.err || qrc=$?
    "$PROG" amend "$@" ${opts:+-o "$opts"} b.qcow2 >b.out 2>b.err || brc=$?
    qe=$(sed "s/^qemu-img: //; s/qemu-img rebase/blockctl rebase/; s/'qemu-img --help'/'blockctl amend --help'/" q.err)
    be=$(sed 's/^blockctl: //; s/ (valid: [^)]*)$//' b.err)
    want=$qrc
    if [ -n "${USAGE:-}" ]; then
        [ "$qrc" -eq 1 ] || { fail "qemu-img amend -o '$opts' $src exited $qrc"; return 1; }
        want=64
    fi
    [ "$brc" -eq "$want" ] || { fail "amend -o '$opts' $src: blockctl exited $brc, qemu-img $qrc ($be / $qe)"; return 1; }
    text_diff "$be" "$qe" "amend -o '$opts' $src (stderr)" || return 1
    qemu_clean b.qcow2 || return 1
    text_diff "$(info_of b.qcow2)" "$(info_of q.qcow2)" "amend -o '$opts' $src: qemu-img info" || return 1
    qemu_same b.qcow2 q.qcow2 || return 1
    local sn
    for sn in $(qemu-img snapshot -l q.qcow2 | awk 'NR > 2 { print $2 }'); do
        snap_raw q.qcow2 "$sn" q.snap
        snap_raw b.qcow2 "$sn" b.snap
        cmp -s q.snap b.snap || { fail "amend -o '$opts' $src: snapshot $sn reads differently"; return 1; }
    done
}

# The images of the table (in the test's folder)
make_images() {
    mkq plain.qcow2 8M
    qio plain.qcow2 'write -P 1 0 1M' 'write -z 2M 128k' 'write -P 2 4M 64k' 'write -z 4M 64k' \
        'write -c -P 3 6M 64k'
    mkq c4k.qcow2 4M cluster_size=4k
    qio c4k.qcow2 'write -P 1 1000 300k' 'write -z 1M 8k' 'write -c -P 2 2M 4k'
    mkq c512.qcow2 1M cluster_size=512
    qio c512.qcow2 'write -P 1 0 100k' 'write -z 200k 1k'
    mkq v2.qcow2 8M compat=0.10
    qio v2.qcow2 'write -P 1 0 1M' 'write -P 2 5M 64k'
    mkq lazy.qcow2 8M lazy_refcounts=on
    qio lazy.qcow2 'write -P 1 0 1M' 'write -z 3M 64k'
    mkq rc8.qcow2 8M refcount_bits=8
    qio rc8.qcow2 'write -P 1 0 1M'
    # a snapshot shares clusters (refcount 2) and zero clusters with the image
    mkq snap.qcow2 8M
    qio snap.qcow2 'write -P 1 0 1M' 'write -z 2M 128k' 'write -P 3 4M 64k' 'write -z 4M 64k'
    qemu-img snapshot -c s1 snap.qcow2
    qio snap.qcow2 'write -P 2 512k 64k' 'write -z 3M 64k'
    # an overlay with zero clusters over a raw base (they must stay zero)
    truncate -s 8M base.raw
    QIO_FMT=raw qio base.raw 'write -P 7 0 8M'
    qemu-img create -q -f qcow2 -b base.raw -F raw over.qcow2
    qio over.qcow2 'write -z 1M 256k' 'write -P 3 4M 64k' 'write -z 4M 64k' 'write -P 4 6M 4k'
    mkq extl2.qcow2 8M extended_l2=on
    qio extl2.qcow2 'write -P 1 0 8k'
    mkq zstd.qcow2 8M compression_type=zstd
    qio zstd.qcow2 'write -P 1 0 64k'
    mkq zstdc.qcow2 8M compression_type=zstd
    qio zstdc.qcow2 'write -c -P 1 0 64k'
    mkq bm.qcow2 8M
    qemu-img bitmap --add bm.qcow2 b0
    qio bm.qcow2 'write -P 1 0 64k'
    mkq resized.qcow2 8M
    qemu-img snapshot -c s1 resized.qcow2
    qemu-img resize -q resized.qcow2 16M
}

@test "amend: compat, refcount_bits, lazy_refcounts and size over a table of images, as qemu-img" {
    make_images
    local img opts bad=0
    for img in plain c4k c512 v2 lazy rc8 snap over; do
        for opts in compat=0.10 compat=1.1 compat=v2 compat=v3 refcount_bits=1 refcount_bits=2 \
            refcount_bits=4 refcount_bits=8 refcount_bits=16 refcount_bits=32 refcount_bits=64 \
            lazy_refcounts=on lazy_refcounts=off size=16M size=8M \
            compat=1.1,refcount_bits=8,lazy_refcounts=on compat=0.10,refcount_bits=16 \
            compat=0.10,lazy_refcounts=off refcount_bits=2,size=12M,lazy_refcounts=on; do
            amend_like_qemu $img.qcow2 "$opts" || bad=1
        done
    done
    [ "$bad" -eq 0 ]
}

@test "amend: what compat=0.10 cannot hold is refused with qemu-img's messages" {
    make_images
    local bad=0
    # extended L2, zstd with compressed clusters, refcount width, resized snapshot
    amend_like_qemu extl2.qcow2 compat=0.10 || bad=1
    amend_like_qemu zstd.qcow2 compat=0.10 || bad=1
    amend_like_qemu zstdc.qcow2 compat=0.10 || bad=1
    amend_like_qemu rc8.qcow2 compat=0.10 || bad=1
    amend_like_qemu resized.qcow2 compat=0.10 || bad=1
    amend_like_qemu v2.qcow2 lazy_refcounts=on || bad=1
    amend_like_qemu v2.qcow2 refcount_bits=8 || bad=1
    amend_like_qemu plain.qcow2 lazy_refcounts=on,compat=0.10 || bad=1
    amend_like_qemu snap.qcow2 refcount_bits=1 || bad=1
    [ "$bad" -eq 0 ]
}

@test "amend compat=0.10 of an image with persistent bitmaps is refused (qemu-img leaves leaks); the image is unchanged" {
    make_images
    cp bm.qcow2 b.qcow2
    run --separate-stderr "$PROG" amend -o compat=0.10 b.qcow2
    [ "$status" -eq 1 ] || fail "exited $status"
    [[ $stderr == *"persistent bitmaps"* ]] || fail "stderr: $stderr"
    qemu_clean b.qcow2
    cmp -s b.qcow2 bm.qcow2 || fail "the image changed"
    # what qemu-img does instead: a v2 image with leaked clusters
    cp bm.qcow2 q.qcow2
    qemu-img amend -o compat=0.10 q.qcow2 2>/dev/null
    expect_exit 3 qemu-img check q.qcow2 >/dev/null 2>&1
    # other changes keep the bitmap
    amend_like_qemu bm.qcow2 refcount_bits=4
    amend_like_qemu bm.qcow2 lazy_refcounts=on
}

@test "amend compat=0.10: zeroes over a cluster a snapshot shares go elsewhere (qemu-img 7.2 overwrites the snapshot's data)" {
    truncate -s 4M base.raw
    QIO_FMT=raw qio base.raw 'write -P 7 0 4M'
    qemu-img create -q -f qcow2 -b base.raw -F raw src.qcow2
    qio src.qcow2 'write -P 1 1M 64k' 'write -z 2M 64k'
    qemu-img snapshot -c s1 src.qcow2
    # kept allocated and shared: zero flag on a cluster of refcount 2
    qio src.qcow2 'write -z 1M 64k'
    snap_raw src.qcow2 s1 want.snap
    cp src.qcow2 b.qcow2
    run -0 "$PROG" amend -o compat=0.10 b.qcow2
    qemu_clean b.qcow2
    qemu_same src.qcow2 b.qcow2
    snap_raw b.qcow2 s1 got.snap
    cmp -s want.snap got.snap || fail "the snapshot's data changed"
    [ "$(qemu-img info --output=json b.qcow2 | jq -r '."format-specific".data.compat')" = 0.10 ]
    # qemu-img's own result, for the record: the snapshot reads zeroes there
    cp src.qcow2 q.qcow2
    qemu-img amend -o compat=0.10 q.qcow2
    snap_raw q.qcow2 s1 q.snap
    ! cmp -s want.snap q.snap || skip "qemu-img keeps the snapshot's data now"
}

@test "amend: backing_file and backing_fmt only to what they are; other options refused as qemu-img does" {
    make_images
    local bad=0 opts
    for opts in backing_file=base.raw backing_file=base.raw,backing_fmt=raw backing_fmt=raw \
        backing_file=other.raw,backing_fmt=raw backing_file=x,lazy_refcounts=on \
        refcount_bits=8,backing_file=x size=16M,backing_fmt=qcow2 \
        backing_file=base.raw,backing_fmt=raw,lazy_refcounts=on; do
        amend_like_qemu over.qcow2 "$opts" || bad=1
    done
    for opts in backing_fmt=qcow2 data_file=x data_file_raw=on data_file_raw=off \
        encrypt.state=x size=5000; do
        amend_like_qemu plain.qcow2 "$opts" || bad=1
    done
    # values that are not valid, unknown options: usage errors
    for opts in cluster_size=4k foo=1 compat=2 compat=2,refcount_bits=3 refcount_bits=3 \
        refcount_bits=0 refcount_bits=x encrypt.keyslot=x size=x lazy_refcounts=maybe \
        preallocation=full; do
        USAGE=1 amend_like_qemu plain.qcow2 "$opts" || bad=1
    done
    [ "$bad" -eq 0 ]
    # and what is valid is said
    cp plain.qcow2 b.qcow2
    run -64 --separate-stderr "$PROG" amend -o cluster_szie=4k b.qcow2
    [ "${stderr_lines[0]}" = "blockctl: Invalid parameter 'cluster_szie' (valid: size, compat, backing_file, backing_fmt, lazy_refcounts, refcount_bits)" ] ||
        fail "$stderr"
    run -64 --separate-stderr "$PROG" amend -o compat=2 b.qcow2
    [ "$stderr" = "blockctl: Unknown compatibility level 2 (valid: 0.10 or v2, 1.1 or v3)" ] || fail "$stderr"
    cmp -s b.qcow2 plain.qcow2 || fail "a refused amend changed the image"
}

@test "amend: no -o, no file, a raw image, -o help (what blockctl supports of qemu-img's list)" {
    make_images
    USAGE=1 amend_like_qemu plain.qcow2 ""
    run -64 --separate-stderr "$PROG" amend -o compat=1.1
    [ "$stderr" = "blockctl: Expecting one image file name" ] || fail "$stderr"
    run -64 --separate-stderr "$PROG" amend -o compat=1.1 a b
    [ "$stderr" = "blockctl: Expecting one image file name" ] || fail "$stderr"
    run -1 --separate-stderr "$PROG" amend -f raw -o size=1M base.raw
    [ "$stderr" = "blockctl: Format driver 'raw' does not support option amendment" ] || fail "$stderr"
    run -1 --separate-stderr "$PROG" amend -f raw -o help
    [ "$stderr" = "blockctl: Format driver 'raw' does not support option amendment" ] || fail "$stderr"
    # the list: qemu-img's lines for the options blockctl amends, nothing else
    local ours theirs
    ours=$("$PROG" amend -f qcow2 -o help)
    theirs=$(qemu-img amend -f qcow2 -o help | grep -vE '^  (encrypt\.|data_file)')
    text_diff "$ours" "$theirs" "amend -o help"
    [ "$("$PROG" amend -o help plain.qcow2)" = "$ours" ] || fail "-o help with a file differs"
}

@test "amend -p prints qemu-img's progress line; -q silences it" {
    make_images
    cp plain.qcow2 b.qcow2
    run -0 "$PROG" amend -p -o lazy_refcounts=on b.qcow2
    cp plain.qcow2 q.qcow2
    [ "$output" = "$(qemu-img amend -p -o lazy_refcounts=on q.qcow2)" ] || fail "-p: $(printf %q "$output")"
    run -0 "$PROG" amend -p -q -o refcount_bits=4 b.qcow2
    [ -z "$output" ] || fail "-q: $output"
    # a refcount change: from 0 to 100, ending the line
    run -0 "$PROG" amend -p -o refcount_bits=64 b.qcow2
    [[ $output == "    (0.00/100%)"$'\r'* ]] || fail "start: $(printf %q "$output")"
    [[ $output == *"    (100.00/100%)"$'\r' ]] || fail "end: $(printf %q "$output")"
    qemu_clean b.qcow2
    qemu_same b.qcow2 plain.qcow2
}

# sweep SRC OPTS: for every write and sync of `amend -o OPTS` (counted
# first), a kill before it, a write torn half-way then a kill, and an EIO:
# the image stays one qemu-img check accepts (0, or 3: leaks) and reads as
# SRC (and its snapshots as SRC's); a success did what was asked
sweep() {
    local src=$1 opts=$2 op n i act rc c bad=0 runs=0
    cp "$src" x.qcow2
    rm -f count
    BLOCKCTL_FAULT_COUNT=$PWD/count "$PROG" amend -o "$opts" x.qcow2
    qemu_clean x.qcow2
    local want
    want=$(info_of x.qcow2)
    local snaps
    snaps=$(qemu-img snapshot -l "$src" | awk 'NR > 2 { print $2 }')
    for sn in $snaps; do snap_raw "$src" "$sn" "src.$sn"; done
    for op in pwrite fdatasync; do
        n=$(awk -v o=$op '$1 == o { print $2 }' count)
        [ "$n" -gt 0 ] || continue
        for i in $(seq 1 "$n"); do
            for act in kill torn eio; do
                cp "$src" x.qcow2
                rc=0
                { (BLOCKCTL_FAULT=$op:$i:$act exec "$PROG" amend -o "$opts" x.qcow2) >/dev/null 2>&1; } 2>/dev/null || rc=$?
                runs=$((runs + 1))
                c=0
                qemu-img check x.qcow2 >check.out 2>&1 || c=$?
                if [ "$c" -ne 0 ] && [ "$c" -ne 3 ]; then
                    echo "$opts, $op:$i:$act (exit $rc): qemu-img check exited $c: $(cat check.out)" >&2
                    bad=1
                    continue
                fi
                qemu-img compare "$src" x.qcow2 >/dev/null 2>&1 ||
                    { echo "$opts, $op:$i:$act: the guest data changed" >&2; bad=1; }
                for sn in $snaps; do
                    snap_raw x.qcow2 "$sn" x.snap
                    cmp -s x.snap "src.$sn" || { echo "$opts, $op:$i:$act: snapshot $sn changed" >&2; bad=1; }
                done
                if [ "$rc" -eq 0 ] && [ "$(info_of x.qcow2)" != "$want" ]; then
                    echo "$opts, $op:$i:$act: exit 0 but not amended: $(info_of x.qcow2)" >&2
                    bad=1
                fi
                if [ "$act" = eio ] && [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
                    echo "$opts, $op:$i:eio: exited $rc" >&2
                    bad=1
                fi
            done
        done
    done
    [ "$runs" -ge 6 ] || { fail "$opts: only $runs fault runs"; return 1; }
    [ "$bad" -eq 0 ]
}

@test "amend refcount_bits: a kill, a torn write or an EIO at any write or sync leaves a good image" {
    mkq src.qcow2 8M cluster_size=4k
    qio src.qcow2 'write -P 1 0 1M' 'write -z 2M 128k' 'write -c -P 5 3M 4k'
    qemu-img snapshot -c s1 src.qcow2
    qio src.qcow2 'write -P 2 512k 64k' 'write -P 3 6M 1M'
    sweep src.qcow2 refcount_bits=2
    sweep src.qcow2 refcount_bits=64
    # many refcount blocks: 512-byte clusters, 1-bit entries
    mkq small.qcow2 2M cluster_size=512
    qio small.qcow2 'write -P 1 0 1M' 'write -z 1536k 4k'
    sweep small.qcow2 refcount_bits=1
}

@test "amend compat=0.10/1.1: a kill, a torn write or an EIO at any write or sync leaves a good image" {
    truncate -s 8M base.raw
    QIO_FMT=raw qio base.raw 'write -P 7 0 8M'
    qemu-img create -q -f qcow2 -b base.raw -F raw src.qcow2
    qio src.qcow2 'write -z 1M 256k' 'write -P 3 4M 64k' 'write -z 4M 64k' 'write -P 1 6M 64k'
    qemu-img snapshot -c s1 src.qcow2
    qio src.qcow2 'write -z 6M 64k'
    sweep src.qcow2 compat=0.10
    mkq v2.qcow2 4M compat=0.10
    qio v2.qcow2 'write -P 1 0 1M'
    sweep v2.qcow2 compat=1.1,refcount_bits=8,lazy_refcounts=on
}
