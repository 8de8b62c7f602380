#!/usr/bin/env bats
# Fault injection through BLOCKCTL_FAULT (syntax at the top of lib/io.h):
# a failing write or sync during `create` leaves no file behind; a failing
# write during `check -r all` leaves an image with leaks at most, that a
# later `check -r all` repairs, with the contents unchanged.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

MAXN=40

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
    # base: header, refcount table, refcount block, L1, L2, data x3
    mkq base.qcow2 64M
    qio base.qcow2 'write -P 1 0 192k'
    # leaks only: a discarded cluster in the middle, and two clusters past
    # the last one in use, all with refcount 1
    cp base.qcow2 leak.qcow2
    qio leak.qcow2 'discard 64k 64k'
    cp leak.qcow2 leak.orig
    truncate -s $(($(fsize leak.qcow2) + 131072)) leak.qcow2
    # corruption: a data cluster with refcount 0 (needs a rebuild)
    cp base.qcow2 rc0.qcow2
    cp base.qcow2 rc0.orig
    {
        echo "leak.qcow2 rcg 0 + rc 6 1 + rc last 1 + rc 9 1"
        echo "rc0.qcow2 rcg 65536 0"
    } | qedit_batch
    # the oracle agrees: leak.qcow2 only leaks, rc0.qcow2 is corrupt
    local rc=0
    qemu-img check leak.qcow2 >/dev/null 2>&1 || rc=$?
    [ "$rc" -eq 3 ] || { echo "leak.qcow2: qemu-img check exited $rc" >&2; return 1; }
    rc=0
    qemu-img check rc0.qcow2 >/dev/null 2>&1 || rc=$?
    [ "$rc" -eq 2 ] || { echo "rc0.qcow2: qemu-img check exited $rc" >&2; return 1; }
}

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
}

# create_fails_cleanly SPEC CREATE_ARGS...: with BLOCKCTL_FAULT=SPEC, create
# of x.img exits 1 and leaves no file; or the fault never fired and the
# image is good.  Returns 0 if it failed, 2 if it succeeded.
create_fails_cleanly() {
    local spec=$1 rc=0
    shift
    rm -f x.img
    BLOCKCTL_FAULT=$spec "$PROG" create -q "$@" x.img 4M >out 2>err || rc=$?
    # (called as `f || rc=$?`, where errexit is off: every check returns)
    if [ "$rc" -eq 0 ]; then
        [ -e x.img ] || { fail "$spec: create succeeded without a file"; return 1; }
        if [[ " $* " == *" qcow2 "* ]]; then
            qemu_clean x.img || { fail "$spec: create succeeded, image broken"; return 1; }
        fi
        return 2
    fi
    [ "$rc" -eq 1 ] || { fail "$spec: create exited $rc, expected 1; $(cat err)"; return 1; }
    [ ! -e x.img ] || { fail "$spec: create failed and left x.img ($(fsize x.img) bytes)"; return 1; }
    [ -s err ] || { fail "$spec: no error message"; return 1; }
    return 0
}

# each_call OP ACTION CREATE_ARGS...: fault the 1st, 2nd, ... OP call until
# create no longer fails; the first must fail
each_call() {
    local op=$1 action=$2 n rc
    shift 2
    for ((n = 1; n <= MAXN; n++)); do
        rc=0
        create_fails_cleanly "$op:$n:$action" "$@" || rc=$?
        [ "$rc" -ne 1 ] || return 1
        if [ "$rc" -eq 2 ]; then
            [ "$n" -gt 1 ] || { fail "the first $op never failed create"; return 1; }
            return 0
        fi
    done
}

@test "create -f qcow2: a failing pwrite (EIO) at each call leaves no file" {
    each_call pwrite eio -f qcow2
}

@test "create -f qcow2: ENOSPC at each pwrite leaves no file" {
    each_call pwrite enospc -f qcow2
}

@test "create -f qcow2: short writes leave no file" {
    local rc=0
    create_fails_cleanly 'pwrite:*:short' -f qcow2 || rc=$?
    [ "$rc" -eq 0 ]
}

@test "create -f qcow2: a failing fdatasync or fsync leaves no file" {
    local rc=0
    create_fails_cleanly 'sync:*:eio' -f qcow2 || rc=$?
    [ "$rc" -eq 0 ]
    rc=0
    create_fails_cleanly 'sync:1:eio' -f qcow2 || rc=$?
    [ "$rc" -eq 0 ]
}

@test "create -f qcow2: a failing ftruncate leaves no file" {
    local rc=0
    create_fails_cleanly 'ftruncate:*:eio' -f qcow2 || rc=$?
    [ "$rc" -eq 0 ]
}

@test "create -f qcow2: failing to open the file leaves no file" {
    local rc=0
    create_fails_cleanly 'open:*:eio' -f qcow2 || rc=$?
    [ "$rc" -eq 0 ]
}

@test "create -f qcow2 with a backing file: each failing pwrite leaves no file" {
    cp "$BATS_FILE_TMPDIR/base.qcow2" b.qcow2
    each_call pwrite eio -f qcow2 -b b.qcow2 -F qcow2
    # the backing file is untouched
    cmp b.qcow2 "$BATS_FILE_TMPDIR/base.qcow2"
}

@test "create -f qcow2 -o preallocation=metadata: each failing pwrite leaves no file" {
    each_call pwrite eio -f qcow2 -o preallocation=metadata
}

@test "create -f qcow2 -o preallocation=falloc: a failing fallocate leaves no file" {
    local rc=0
    create_fails_cleanly 'fallocate:*:eio' -f qcow2 -o preallocation=falloc || rc=$?
    [ "$rc" -eq 0 ]
}

@test "create -f qcow2 -o preallocation=full: ENOSPC leaves no file" {
    local rc=0
    create_fails_cleanly 'pwrite:*:enospc' -f qcow2 -o preallocation=full || rc=$?
    [ "$rc" -eq 0 ]
    rc=0
    create_fails_cleanly 'fallocate:*:enospc' -f qcow2 -o preallocation=full || rc=$?
    [ "$rc" -ne 1 ]
}

@test "create -f raw -o preallocation=full: ENOSPC leaves no file" {
    local rc=0
    create_fails_cleanly 'pwrite:*:enospc' -f raw -o preallocation=full || rc=$?
    [ "$rc" -ne 1 ]
    rc=0
    create_fails_cleanly 'ftruncate:*:eio' -f raw || rc=$?
    [ "$rc" -ne 1 ]
}

@test "create: the error for each failing write is one line naming the file" {
    local n rc errs=0
    for ((n = 1; n <= MAXN; n++)); do
        rm -f x.img
        rc=0
        BLOCKCTL_FAULT="pwrite:$n:eio" "$PROG" create -q -f qcow2 x.img 4M 2>err || rc=$?
        [ "$rc" -ne 0 ] || break
        if [ "$(wc -l <err)" -ne 1 ] || ! grep -q "'x.img'" err; then
            echo "pwrite:$n:eio: $(cat err)" >&2
            errs=$((errs + 1))
        fi
    done
    [ "$errs" -eq 0 ]
}

@test "create: a fault on another file's name does not fire" {
    run -0 env BLOCKCTL_FAULT='pwrite:*:eio:*.other' "$PROG" create -q -f qcow2 x.qcow2 4M
    qemu_clean x.qcow2
    run -1 env BLOCKCTL_FAULT='pwrite:*:eio:*.qcow2' "$PROG" create -q -f qcow2 y.qcow2 4M
    [ ! -e y.qcow2 ]
}

@test "create killed at any write leaves no file or a good image" {
    local n a rc errs=0
    for ((n = 1; n <= MAXN; n++)); do
        for a in kill torn; do
            rm -f x.img
            rc=0
            BLOCKCTL_FAULT="pwrite:$n:$a" "$PROG" create -q -f qcow2 x.img 4M 2>/dev/null || rc=$?
            [ "$rc" -eq 0 ] && break 2
            [ "$rc" -eq 137 ] || fail "pwrite:$n:$a: exit $rc, expected 137 (SIGKILL)"
            if [ -e x.img ] && ! qemu-img check -f qcow2 x.img >/dev/null 2>&1; then
                echo "pwrite:$n:$a: left a half-written x.img ($(fsize x.img) bytes, $(qemu-img info --output=json x.img | jq -r .format) to qemu-img)" >&2
                errs=$((errs + 1))
            fi
        done
    done
    [ "$errs" -eq 0 ]
    # a plain create afterwards works, and leaves nothing else behind
    rm -f x.img
    run -0 "$PROG" create -q -f qcow2 x.img 4M
    qemu_clean x.img
    run -0 ls -A
    [ "$output" = x.img ] || fail "left behind: $output"
}

@test "create --force over an image: a failing write leaves the old image or nothing" {
    local n rc
    for ((n = 1; n <= MAXN; n++)); do
        cp "$BATS_FILE_TMPDIR/base.qcow2" x.img
        rc=0
        BLOCKCTL_FAULT="pwrite:$n:eio" "$PROG" create -q --force -f qcow2 x.img 4M 2>/dev/null || rc=$?
        [ "$rc" -eq 0 ] && break
        [ "$rc" -eq 1 ] || fail "pwrite:$n: exit $rc"
        if [ -e x.img ]; then
            cmp -s x.img "$BATS_FILE_TMPDIR/base.qcow2" ||
                qemu_clean x.img ||
                fail "pwrite:$n: create --force failed and left a broken x.img"
        fi
    done
}

# repair_faults IMG OP ACTION: for the 1st, 2nd, ... OP call, check -r all
# with that call failing ends non-zero (or succeeds with a clean image);
# the image then has leaks at most (for a leaking image), reads as before,
# and a fault-free check -r all repairs it
repair_faults() {
    local img=$1 op=$2 action=$3 n rc q max_q=3 fired=0
    [ "$img" = rc0 ] && max_q=3
    for ((n = 1; n <= MAXN; n++)); do
        cp "$BATS_FILE_TMPDIR/$img.qcow2" x.qcow2
        rc=0
        BLOCKCTL_FAULT="$op:$n:$action" "$PROG" check -r all x.qcow2 >/dev/null 2>err || rc=$?
        case $action in
        kill | torn) [ "$rc" -eq 0 ] || [ "$rc" -eq 137 ] || fail "$op:$n:$action: exit $rc" ;;
        *) [ "$rc" -lt 128 ] || fail "$op:$n:$action: killed by a signal: $(cat err)" ;;
        esac
        q=0
        qemu-img check x.qcow2 >/dev/null 2>&1 || q=$?
        if [ "$rc" -eq 0 ]; then
            [ "$q" -eq 0 ] || fail "$op:$n:$action: check -r all succeeded but qemu-img check exits $q"
        else
            fired=1
            if [ "$img" = leak ]; then
                [ "$q" -eq 0 ] || [ "$q" -eq 3 ] ||
                    fail "$op:$n:$action: after a failed repair qemu-img check exits $q (corruption)"
            fi
        fi
        qemu_same -U x.qcow2 "$BATS_FILE_TMPDIR/$img.orig" ||
            fail "$op:$n:$action: contents changed"
        run -0 "$PROG" check -r all x.qcow2
        qemu_clean x.qcow2 || fail "$op:$n:$action: a later check -r all did not repair"
        qemu_same x.qcow2 "$BATS_FILE_TMPDIR/$img.orig"
        [ "$rc" -ne 0 ] || break
    done
    [ "$fired" -eq 1 ] || fail "no $op fault made check -r all fail"
}

@test "check -r all on a leaking image: EIO at each pwrite" { repair_faults leak pwrite eio; }
@test "check -r all on a leaking image: ENOSPC at each pwrite" { repair_faults leak pwrite enospc; }
@test "check -r all on a leaking image: short writes" { repair_faults leak pwrite short; }
@test "check -r all on a leaking image: EIO at each sync" { repair_faults leak sync eio; }
@test "check -r all on a leaking image: killed at each pwrite" { repair_faults leak pwrite kill; }
@test "check -r all on a leaking image: torn writes" { repair_faults leak pwrite torn; }
@test "check -r all on a leaking image: a failing ftruncate" {
    cp "$BATS_FILE_TMPDIR/leak.qcow2" x.qcow2
    local rc=0
    BLOCKCTL_FAULT='ftruncate:*:eio' "$PROG" check -r all x.qcow2 >/dev/null 2>&1 || rc=$?
    [ "$rc" -lt 128 ]
    local q=0
    qemu-img check x.qcow2 >/dev/null 2>&1 || q=$?
    [ "$q" -eq 0 ] || [ "$q" -eq 3 ]
    run -0 "$PROG" check -r all x.qcow2
    qemu_clean x.qcow2
    qemu_same x.qcow2 "$BATS_FILE_TMPDIR/leak.orig"
}
@test "check -r leaks on a leaking image: EIO at each pwrite" {
    local n rc q
    for ((n = 1; n <= MAXN; n++)); do
        cp "$BATS_FILE_TMPDIR/leak.qcow2" x.qcow2
        rc=0
        BLOCKCTL_FAULT="pwrite:$n:eio" "$PROG" check -r leaks x.qcow2 >/dev/null 2>&1 || rc=$?
        q=0
        qemu-img check x.qcow2 >/dev/null 2>&1 || q=$?
        [ "$q" -eq 0 ] || [ "$q" -eq 3 ] || fail "pwrite:$n: qemu-img check exits $q"
        run -0 "$PROG" check -r leaks x.qcow2
        qemu_clean x.qcow2
        [ "$rc" -ne 0 ] || break
    done
}

@test "check -r all rebuilding refcounts: EIO at each pwrite, then a repair" { repair_faults rc0 pwrite eio; }
@test "check -r all rebuilding refcounts: killed at each pwrite, then a repair" { repair_faults rc0 pwrite kill; }
@test "check -r all rebuilding refcounts: EIO at each sync, then a repair" { repair_faults rc0 sync eio; }

@test "check without -r reads only: a fault on writes changes nothing" {
    cp "$BATS_FILE_TMPDIR/leak.qcow2" x.qcow2
    run -3 env BLOCKCTL_FAULT='pwrite:*:eio,ftruncate:*:eio,sync:*:eio' "$PROG" check x.qcow2
    cmp x.qcow2 "$BATS_FILE_TMPDIR/leak.qcow2"
}

@test "read errors: info, map, check and compare fail cleanly on EIO" {
    cp "$BATS_FILE_TMPDIR/base.qcow2" x.qcow2
    local c
    for c in "info x.qcow2" "map --output=json x.qcow2" "check x.qcow2" "compare x.qcow2 x.qcow2"; do
        # shellcheck disable=SC2086
        run --separate-stderr env BLOCKCTL_FAULT='pread:*:eio' "$PROG" $c
        [ "$status" -ne 0 ] || fail "$c succeeded with every read failing"
        [ "$status" -lt 128 ] || fail "$c: killed by a signal"
        [[ $stderr == *x.qcow2* ]] || fail "$c: the error does not name the file: $stderr"
    done
    # compare: an open that works but a data read that fails is exit 4... or
    # 2 if the image cannot be opened: never 0 or 1
    run env BLOCKCTL_FAULT='pread:*:eio' "$PROG" compare x.qcow2 x.qcow2
    [ "$status" -ge 2 ] && [ "$status" -le 4 ]
}
