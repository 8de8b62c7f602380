#!/usr/bin/env bats
# `blockctl check` agrees with `qemu-img check` on clean, leaking and
# corrupted images (crafted with tests/data/qcow2edit.py), and `check -r`
# repairs them: qemu-img check is clean afterwards and the guest-visible
# contents are unchanged.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

# Layout of base.qcow2 (as qemu-img 7.2 makes it): header @0, refcount
# table @0x10000, refcount block @0x20000, L1 @0x30000, L2 @0x40000, data
# for guest 0 @0x50000 (cluster 5) and guest 64k @0x60000 (cluster 6).

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
    mkdir cases

    mkq base.qcow2 64M
    qio base.qcow2 'write -P 1 0 128k'
    local c
    for c in clean leak2 leakfree rc0 rc0l2 rc0rb l2copied l1copied c2 l2eof l2unal corruptbit; do
        cp base.qcow2 "cases/$c.qcow2"
        cp base.qcow2 "cases/$c.orig"
    done
    truncate -s 589824 cases/leakfree.qcow2

    # an L1 entry with an unaligned L2 offset, over zero-filled data so the
    # misread table is all zeros
    mkq cases/l1unal.qcow2 64M
    qio cases/l1unal.qcow2 'write -P 0 0 128k'
    cp cases/l1unal.qcow2 cases/l1unal.orig

    # empty image
    mkq cases/empty.qcow2 64M
    cp cases/empty.qcow2 cases/empty.orig

    # snapshots: shared clusters with refcount 2, and a leak on top
    mkq cases/snap.qcow2 64M
    qio cases/snap.qcow2 'write -P 1 0 128k'
    qemu-img snapshot -c s1 cases/snap.qcow2
    qio cases/snap.qcow2 'write -P 2 0 64k'
    qemu-img snapshot -c s2 cases/snap.qcow2
    cp cases/snap.qcow2 cases/snap.orig
    cp cases/snap.qcow2 cases/snapleak.qcow2
    cp cases/snap.qcow2 cases/snapleak.orig

    # dirty lazy-refcount image: refcounts never written
    mkq cases/dirty.qcow2 64M lazy_refcounts=on
    qio cases/dirty.qcow2 'write -P 1 0 64k' 'abort' 2>/dev/null || true
    cp cases/dirty.qcow2 cases/dirty.orig

    # compressed and fragmented; and with a leaked cluster at the end
    mkq cases/cf.qcow2 1M
    qio cases/cf.qcow2 'write -c -P 1 0 64k' 'write -P 2 256k 64k' 'write -P 3 128k 64k' \
        'write -P 4 64k 64k' 'write -c -P 5 512k 128k'
    cp cases/cf.qcow2 cases/cf.orig
    cp cases/cf.qcow2 cases/cfleak.qcow2
    cp cases/cf.qcow2 cases/cfleak.orig
    truncate -s $(($(fsize cases/cfleak.qcow2) / 65536 * 65536 + 65536)) cases/cfleak.qcow2

    # other refcount widths, cluster sizes and extended L2
    mkq cases/rc1.qcow2 4M refcount_bits=1
    qio cases/rc1.qcow2 'write -P 1 0 128k'
    cp cases/rc1.qcow2 cases/rc1.orig
    cp cases/rc1.qcow2 cases/rc1rc0.orig
    truncate -s $(($(fsize cases/rc1.qcow2) + 65536)) cases/rc1.qcow2
    cp cases/rc1.qcow2 cases/rc1rc0.qcow2
    mkq cases/rc64.qcow2 4M refcount_bits=64
    qio cases/rc64.qcow2 'write -P 1 0 128k'
    cp cases/rc64.qcow2 cases/rc64.orig
    mkq cases/cs512.qcow2 1M cluster_size=512
    qio cases/cs512.qcow2 'write -P 1 0 64k'
    cp cases/cs512.qcow2 cases/cs512clean.qcow2
    cp cases/cs512.qcow2 cases/cs512.orig
    mkq cases/el2.qcow2 4M extended_l2=on
    qio cases/el2.qcow2 'write -P 1 0 4k' 'write -P 2 64k 2k' 'write -z 200k 2k'
    cp cases/el2.qcow2 cases/el2.orig

    # a refcount table that grew past one cluster (512-byte clusters)
    mkq cases/grow.qcow2 9M cluster_size=512
    qio cases/grow.qcow2 'write -P 1 0 9M'
    cp cases/grow.qcow2 cases/grow.orig

    # the damage, in one python3 run (see qcow2edit.py for the commands)
    qedit_batch <<'EDITS'
cases/leak2.qcow2 rc 5 2
cases/leakfree.qcow2 rc 7 1 + rc 8 1
cases/rc0.qcow2 rc 5 0
cases/rc0l2.qcow2 rc 4 0
cases/rc0rb.qcow2 rc 2 0
cases/l2copied.qcow2 l2 0 0x50000
cases/l1copied.qcow2 l1 0 0x40000
cases/c2.qcow2 rc 4 2 + rc 5 2
cases/l2eof.qcow2 l2 65536 0x8000000010000000
cases/l2unal.qcow2 l2 65536 0x8000000000060200
cases/corruptbit.qcow2 set incompatible_features 2
cases/l1unal.qcow2 l1 0 0x8000000000040200
cases/snapleak.qcow2 rcg 65536 +1
cases/cfleak.qcow2 rc last 1
cases/rc1.qcow2 rc last 1
cases/rc1rc0.qcow2 rc last 1 + rcg 0 0
cases/rc64.qcow2 rcg 65536 3
cases/cs512.qcow2 rcg 4096 2 + rcg 8192 0
cases/el2.qcow2 rcg 65536 2
cases/grow.qcow2 rcg 8388608 0 + rcg 4194304 2
EDITS

    # the oracle sees damage in every damaged case (so no test passes
    # because an edit missed)
    local rc
    for c in leak2 leakfree rc0 rc0l2 rc0rb l2copied l1copied c2 l2eof l2unal l1unal \
        snapleak dirty cfleak rc1 rc1rc0 rc64 cs512 el2 grow; do
        rc=0
        qemu-img check "cases/$c.qcow2" >/dev/null 2>&1 || rc=$?
        [ "$rc" -eq 2 ] || [ "$rc" -eq 3 ] || { echo "case $c: qemu-img check exits $rc" >&2; return 1; }
    done
}

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
    mkdir ours theirs
}

# pair NAME: ours/x.qcow2 and theirs/x.qcow2, copies of the case
pair() {
    cp "$BATS_FILE_TMPDIR/cases/$1.qcow2" ours/x.qcow2
    cp "$BATS_FILE_TMPDIR/cases/$1.qcow2" theirs/x.qcow2
}

# agrees NAME: read-only check, JSON and exit status
agrees() {
    pair "$1"
    (cd ours && qemu_check_equal x.qcow2)
}

# human NAME: read-only check, human stdout, stderr lines and exit status
human() {
    pair "$1"
    local a b ea eb rc1=0 rc2=0
    a=$(cd ours && timeout 60 "$PROG" check x.qcow2 2>../ours.err) || rc1=$?
    b=$(cd theirs && qemu-img check x.qcow2 2>../theirs.err) || rc2=$?
    [ "$rc1" -eq "$rc2" ] || fail "blockctl check exited $rc1, qemu-img $rc2"
    text_diff "$a" "$b" "check (stdout)"
    ea=$(sort ours.err)
    eb=$(sort theirs.err)
    text_diff "$ea" "$eb" "check (stderr lines)"
}

# repairs NAME MODE [rebuild]: check -r MODE ends as qemu-img's does: same
# exit status and JSON (the image end offset aside after a refcount
# rebuild, where the new structures may go elsewhere; fragmentation aside),
# and the repaired image reads as before
repairs() {
    # fragmentation is compared by the read-only tests
    local name=$1 mode=$2 filter='del(.filename, ."fragmented-clusters")'
    [ "${3:-}" = rebuild ] && filter='del(.filename, ."fragmented-clusters", ."image-end-offset")'
    pair "$name"
    local a b rc1=0 rc2=0
    a=$(cd ours && timeout 60 "$PROG" check -r "$mode" --output=json x.qcow2 2>/dev/null) || rc1=$?
    b=$(cd theirs && qemu-img check -r "$mode" --output=json x.qcow2 2>/dev/null) || rc2=$?
    [ "$rc1" -eq "$rc2" ] || fail "check -r $mode: blockctl exited $rc1, qemu-img $rc2"
    if [ "$rc2" -ne 1 ]; then
        a=$(jq -S "$filter" <<<"$a") || fail "blockctl printed invalid JSON"
        b=$(jq -S "$filter" <<<"$b")
        text_diff "$a" "$b" "check -r $mode --output=json"
    fi
    # afterwards qemu-img sees the same state in both images
    rc1=0 rc2=0
    qemu-img check ours/x.qcow2 >/dev/null 2>&1 || rc1=$?
    qemu-img check theirs/x.qcow2 >/dev/null 2>&1 || rc2=$?
    [ "$rc1" -eq "$rc2" ] || fail "qemu-img check after repair: $rc1 on blockctl's, $rc2 on qemu-img's"
    if [ "$rc2" -eq 0 ]; then
        qemu_same ours/x.qcow2 "$BATS_FILE_TMPDIR/cases/$name.orig"
    fi
}

# fixes NAME: check -r all leaves a clean image with the old contents
fixes() {
    pair "$1"
    run -0 "$PROG" check -r all ours/x.qcow2
    qemu_clean ours/x.qcow2
    qemu_same ours/x.qcow2 "$BATS_FILE_TMPDIR/cases/$1.orig"
    run -0 "$PROG" check ours/x.qcow2
}

CASES="clean leak2 leakfree rc0 rc0l2 rc0rb l2copied l1copied c2 l2eof l2unal corruptbit l1unal empty snap snapleak dirty cf cfleak rc1 rc1rc0 rc64 cs512 cs512clean el2 grow"

@test "check --output=json: clean" { agrees clean; }
@test "check --output=json: leak (refcount 1 -> 2 on a data cluster)" { agrees leak2; }
@test "check --output=json: leak (unused clusters in the file)" { agrees leakfree; }
@test "check --output=json: refcount 0 on a data cluster" { agrees rc0; }
@test "check --output=json: refcount 0 on an L2 table" { agrees rc0l2; }
@test "check --output=json: refcount 0 on the refcount block" { agrees rc0rb; }
@test "check --output=json: OFLAG_COPIED cleared in L2" { agrees l2copied; }
@test "check --output=json: OFLAG_COPIED cleared in L1" { agrees l1copied; }
@test "check --output=json: OFLAG_COPIED set with refcount 2" { agrees c2; }
@test "check --output=json: L2 entry past the end of the file" { agrees l2eof; }
@test "check --output=json: L2 entry with an unaligned offset" { agrees l2unal; }
@test "check --output=json: L1 entry with an unaligned L2 offset" { agrees l1unal; }
@test "check --output=json: corrupt bit set on a clean image" { agrees corruptbit; }
@test "check --output=json: empty image" { agrees empty; }
@test "check --output=json: internal snapshots" { agrees snap; }
@test "check --output=json: internal snapshots with a leak" { agrees snapleak; }
@test "check --output=json: dirty lazy-refcount image" { agrees dirty; }
@test "check --output=json: compressed and fragmented clusters" { agrees cf; }
@test "check --output=json: compressed image with a leak" { agrees cfleak; }
@test "check --output=json: refcount_bits=1 leak" { agrees rc1; }
@test "check --output=json: refcount_bits=1 leak and refcount 0" { agrees rc1rc0; }
@test "check --output=json: refcount_bits=64 leak" { agrees rc64; }
@test "check --output=json: 512-byte clusters, leak and refcount 0" { agrees cs512; }
@test "check --output=json: extended L2 leak" { agrees el2; }
@test "check --output=json: 512-byte clusters, clean (fragmentation counted as qemu-img counts it)" { agrees cs512clean; }
@test "check --output=json: grown refcount table, leak and refcount 0" { agrees grow; }

@test "check (human): clean" { human clean; }
@test "check (human): leaks" { human leak2; human leakfree; }
@test "check (human): refcount 0" { human rc0; human rc0l2; }
@test "check (human): OFLAG_COPIED" { human l2copied; human l1copied; human c2; }
@test "check (human): L2 entries past EOF and unaligned" { human l2eof; human l2unal; }
@test "check (human): snapshots, dirty, compressed" { human snapleak; human dirty; human cf; }
@test "check (human): refcount widths and cluster sizes" { human rc1rc0; human rc64; human cs512; }

@test "check -r all: leak (refcount 2)" { repairs leak2 all; fixes leak2; }
@test "check -r all: leak (unused clusters, file shrinks)" { repairs leakfree all; fixes leakfree; }
@test "check -r all: refcount 0 on a data cluster (rebuild)" { repairs rc0 all rebuild; fixes rc0; }
@test "check -r all: refcount 0 on an L2 table (rebuild)" { repairs rc0l2 all rebuild; fixes rc0l2; }
@test "check -r all: refcount 0 on the refcount block (rebuild)" { repairs rc0rb all rebuild; fixes rc0rb; }
@test "check -r all: OFLAG_COPIED cleared in L2" { repairs l2copied all; fixes l2copied; }
@test "check -r all: OFLAG_COPIED cleared in L1" { repairs l1copied all; fixes l1copied; }
@test "check -r all: OFLAG_COPIED with refcount 2" { repairs c2 all; fixes c2; }
@test "check -r all: L2 entry past EOF stays a corruption, as in qemu-img" { repairs l2eof all; }
@test "check -r all: L2 entry unaligned stays a corruption, as in qemu-img" { repairs l2unal all rebuild; }
@test "check -r all: L1 entry unaligned, as in qemu-img" { repairs l1unal all; }
@test "check -r all: corrupt bit is cleared" {
    repairs corruptbit all
    qemu-img info --output=json ours/x.qcow2 | jq -e '."format-specific".data.corrupt == false'
}
@test "check -r all: clean and empty images stay untouched in content" { repairs clean all; repairs empty all; }
@test "check -r all: internal snapshots with a leak" { repairs snapleak all; fixes snapleak; }
@test "check -r all: dirty lazy-refcount image (rebuild)" {
    repairs dirty all rebuild
    fixes dirty
    qemu-img info --output=json ours/x.qcow2 | jq -e '."dirty-flag" == false'
}
@test "check -r all: compressed image with a leak" { repairs cfleak all; fixes cfleak; }
@test "check -r all: refcount_bits=1" { repairs rc1 all; repairs rc1rc0 all rebuild; fixes rc1rc0; }
@test "check -r all: refcount_bits=64" { repairs rc64 all; fixes rc64; }
@test "check -r all: 512-byte clusters" { repairs cs512 all rebuild; fixes cs512; }
@test "check -r all: extended L2" { repairs el2 all; fixes el2; }
@test "check -r all: grown refcount table" { repairs grow all rebuild; fixes grow; }

@test "check -r leaks: leaks are repaired" {
    local n
    for n in leak2 leakfree snapleak cfleak rc1 rc64 el2; do
        repairs "$n" leaks
        qemu_clean ours/x.qcow2
        rm -f ours/x.qcow2 theirs/x.qcow2
    done
}
@test "check -r leaks: refcount 0 needs -r all, as in qemu-img" { repairs rc0 leaks; }
@test "check -r leaks: OFLAG_COPIED alone, as in qemu-img" { repairs l2copied leaks; }

@test "check without -r never writes" {
    local n
    for n in $CASES; do
        cp "$BATS_FILE_TMPDIR/cases/$n.qcow2" ours/x.qcow2
        cp ours/x.qcow2 before.qcow2
        run "$PROG" check ours/x.qcow2
        run "$PROG" check --output=json ours/x.qcow2
        cmp ours/x.qcow2 before.qcow2 || fail "check of $n changed the file"
    done
}

@test "check -q prints nothing on stdout and keeps the exit status" {
    pair leakfree
    run -3 qemu-img check -q theirs/x.qcow2
    run -3 --separate-stderr "$PROG" check -q ours/x.qcow2
    [ -z "$output" ]
    run -0 --separate-stderr "$PROG" check -q "$BATS_FILE_TMPDIR/cases/clean.qcow2"
    [ -z "$output" ]
}
