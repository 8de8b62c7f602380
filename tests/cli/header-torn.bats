#!/usr/bin/env bats
# Header and bitmap directory updates survive failures and crashes (issue 8,
# parts 2 and 4):
# - a failing sync at any point of a bitmap change (and of the nightly
#   recipe's --clear-bitmap on the source) leaves an image that qemu-img
#   check finds consistent (leaks at most) and that has the old bitmaps or
#   the new ones, never a table that is referenced but free;
# - a write cut off half-way and a kill (BLOCKCTL_FAULT=pwrite:N:torn) at
#   any write of stream, commit and bitmap changes, on images with bitmaps
#   and backing files (short names, and names too long for the first
#   sector), leaves images that qemu-img and blockctl open, that qemu-img
#   check finds consistent, and that read as before or as after;
# - a power cut between two syncs, which keeps any subset of the 512-byte
#   sectors written since the first (tests/data/powercut.py makes them all),
#   leaves a header that opens and reads as before or as after.
# The references are what QEMU reads: qemu-img convert for the guest view,
# qemu-img info for the bitmap list, qemu-nbd -B + nbdinfo for the bits.
# Torn-write sweeps check that every image opens and passes qemu-img check
# after each write, and compare the contents after every STRIDE-th one
# (default 3); FULL=1 compares after each, and runs all the cases.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

LIB="$BATS_TEST_DIRNAME/header-torn-lib.bash"
STRIDE=${STRIDE:-3}
[ "${FULL:-0}" = 1 ] && STRIDE=1
export STRIDE

setup_file() {
    requires_qemu
    requires_cmd qemu-nbd nbdinfo
    # many syncs: in memory where possible (a kill leaves the same there)
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then
        SCRATCH=$(mktemp -d /dev/shm/blockctl-header-torn.XXXXXX) || return 1
    else
        SCRATCH=$BATS_FILE_TMPDIR/scratch
    fi
    export SCRATCH PROG
    bash "$LIB" setup
}

teardown_file() {
    [ -z "${SCRATCH:-}" ] || rm -rf "$SCRATCH"
}

setup() {
    requires_qemu
    requires_cmd qemu-nbd nbdinfo
    T=$SCRATCH/test.$BATS_TEST_NUMBER
    export T
    mkdir -p "$T"
}

teardown() {
    [ -z "${T:-}" ] || rm -rf "$T"
}

# lib FUNCTION ARGS...: header-torn-lib.bash
lib() {
    bash "$LIB" "$@"
}

full() {
    [ "$STRIDE" -eq 1 ]
}

# ------------------------------------------------------- failed syncs (A)

@test "bitmap --enable --merge --disable: a failing sync at any point leaves the old or new bitmaps, leaks at most" {
    lib sync_fail_sweep mergeflags top.qcow2
}

@test "bitmap --add / --clear / --merge / --remove: a failing sync at any point" {
    local op ops=(add)
    full && ops+=(clear merge remove)
    for op in "${ops[@]}"; do
        lib sync_fail_sweep "$op" top.qcow2 || return 1
    done
}

@test "bitmap: every sync failing from the Nth on (putting the old header back fails too)" {
    lib sync_fail_sweep mergeflags top.qcow2 +
    ! full || lib sync_fail_sweep add top.qcow2 +
}

@test "nightly recipe: a failing sync on the source while clearing the bitmap" {
    lib sync_fail_sweep nightly src.qcow2
}

@test "stream and commit: a failing sync at any point on the image whose header changes" {
    lib sync_fail_sweep stream top.qcow2
    if full; then
        lib sync_fail_sweep commit top.qcow2
        lib sync_fail_sweep lcommit top.qcow2
    fi
}

@test "a failed bitmap change leaves the image usable: the next change works" {
    lib after_failed_clear
}

# ------------------------------------------------------ torn writes (B)

@test "stream of a top with two bitmaps: a torn write at any point (the header rewrite included)" {
    STRIDE=1 lib torn_sweep stream top.qcow2
}

@test "commit (relink, a base that grows): torn writes on each image" {
    lib torn_sweep commit base.qcow2
    if full; then
        lib torn_sweep commit top.qcow2
        lib torn_sweep commit mid.qcow2
    fi
}

@test "bitmap changes on an image with a backing file: torn writes" {
    local op ops=(mergeflags)
    full && ops+=(add remove)
    for op in "${ops[@]}"; do
        lib torn_sweep "$op" top.qcow2 || return 1
    done
}

@test "backing file names that do not fit in the first sector: torn writes" {
    lib torn_sweep lstream top.qcow2
    if full; then
        lib torn_sweep lcommit top.qcow2
        lib torn_sweep ladd top.qcow2
    fi
}

@test "nightly recipe: torn writes on the source" {
    lib torn_sweep nightly src.qcow2
}

# --------------------------------------------------------- power cuts (B)

@test "power cut: stream of a top with bitmaps (header and bitmap directory)" {
    lib powercut stream top.qcow2
}

@test "power cut: commit relinks and grows the base" {
    full || skip "FULL=1 runs it"
    lib powercut commit top.qcow2
    lib powercut commit base.qcow2
}

@test "power cut: long backing file names (commit: relink from one to another), bitmap add" {
    lib powercut lcommit top.qcow2
    if full; then
        lib powercut lstream top.qcow2
        lib powercut ladd top.qcow2
    fi
}

@test "power cut: bitmap changes" {
    lib powercut mergeflags top.qcow2
    ! full || lib powercut remove top.qcow2
}
