#!/usr/bin/env bats
# check, check -r leaks and check -r all with one I/O fault at each point
# (BLOCKCTL_FAULT, syntax at the top of lib/io.h): EIO at every pread, EIO
# and ENOSPC at every pwrite, EIO at every sync the command makes, on
#   leak    leaked clusters only: a free cluster and the last cluster of the
#           file with refcount 1 (and one past the end of the file, which
#           qemu-img ignores);
#   rc0     a data cluster with refcount 0: -r all rebuilds the refcount
#           structure, -r leaks refuses;
#   bitmap  two persistent bitmaps with data (qemu-img bitmap --add, then
#           qemu-io writes), and leaked clusters.
# A fault either changes nothing at all (same exit status, output and
# resulting file as without it), or the command fails with exit 1 and one
# error line naming the file, never claiming a clean image.  The file is
# then byte-identical to the input (always for plain check), or qemu-img
# check finds at most leaks (exit 0 or 3); the guest view and the bitmaps
# are unchanged; and the same command without faults ends as it does on
# the untouched input.
#
# How many calls of a kind a command makes is found by killing it at the
# Nth one (exit 137), in a binary search.  Runtime: by default every
# STRIDE-th point of each series is tried (STRIDE=2, starting at a point
# that changes from test to test; the first and last always): about 30 s
# of CPU time.  FULL=1 in the environment tries every point.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
    local r
    # 192 MiB, data at 0, 64M and 150M
    mkq base.qcow2 192M
    qio base.qcow2 'write -P 1 0 64k' 'write -P 2 64M 64k' 'write -P 3 150M 64k'
    cp base.qcow2 leak.qcow2
    truncate -s $(($(fsize leak.qcow2) + 2 * 65536)) leak.qcow2
    cp base.qcow2 rc0.qcow2
    # copied: a data cluster with refcount 2 and one reference (a leak), its
    # L2 entry without OFLAG_COPIED (as refcount 2 wants); the repair sets
    # the refcount to 1, then OFLAG_COPIED
    cp base.qcow2 copied.qcow2
    local e
    e=$(qedit copied.qcow2 l2 0)
    mkq bitmap.qcow2 192M
    qemu-img bitmap --add bitmap.qcow2 b0
    qemu-img bitmap --add -g 128k bitmap.qcow2 b1
    qio bitmap.qcow2 'write -P 1 0 64k' 'write -P 2 64M 64k' 'write -P 3 150M 64k'
    truncate -s $(($(fsize bitmap.qcow2) / 65536 * 65536 + 2 * 65536)) bitmap.qcow2
    {
        # cluster 8 is free in base.qcow2; 40 lies past the end of the file
        echo "leak.qcow2 rc 8 1 + rc last 1 + rc 40 1"
        echo "rc0.qcow2 rcg 67108864 0"
        echo "bitmap.qcow2 rc last 1"
        echo "copied.qcow2 l2 0 $((e & 0x7fffffffffffffff)) + rcg 0 2"
    } | qedit_batch
    for r in leak rc0 bitmap; do
        cp "$r.qcow2" "$r.orig"
    done
    # the oracle agrees: leaks only, corrupt, leaks only
    r=0
    qemu-img check leak.qcow2 >/dev/null 2>&1 || r=$?
    [ "$r" -eq 3 ] || { echo "leak.qcow2: qemu-img check exited $r" >&2; return 1; }
    r=0
    qemu-img check rc0.qcow2 >/dev/null 2>&1 || r=$?
    [ "$r" -eq 2 ] || { echo "rc0.qcow2: qemu-img check exited $r" >&2; return 1; }
    r=0
    qemu-img check bitmap.qcow2 >/dev/null 2>&1 || r=$?
    [ "$r" -eq 3 ] || { echo "bitmap.qcow2: qemu-img check exited $r" >&2; return 1; }
    r=0
    qemu-img check copied.qcow2 >/dev/null 2>&1 || r=$?
    [ "$r" -eq 3 ] || { echo "copied.qcow2: qemu-img check exited $r" >&2; return 1; }
    [ "$(bitmaps bitmap.qcow2 | jq length)" -eq 2 ] || { echo "bitmap.qcow2: no bitmaps" >&2; return 1; }
}

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
}

# bitmaps IMG: the bitmaps qemu-img lists (names, flags, granularity)
bitmaps() {
    qemu-img info -U --output=json "$1" | jq -c '.["format-specific"].data.bitmaps // []'
}

# run_check SPEC: the command under test on x.qcow2 (stdout to out, stderr
# to err); sets rc
run_check() {
    rc=0
    BLOCKCTL_FAULT=$1 timeout 60 "$PROG" "${CMD[@]}" x.qcow2 >out 2>err || rc=$?
}

# count_calls OP: how many OP calls the command makes on IMG
count_calls() {
    local op=$1 lo=0 hi=1 mid
    while :; do
        cp "$IMG" x.qcow2
        run_check "$op:$hi:kill"
        [ "$rc" -eq 137 ] || break
        lo=$hi
        hi=$((hi * 2))
    done
    while [ $((hi - lo)) -gt 1 ]; do
        mid=$(((lo + hi) / 2))
        cp "$IMG" x.qcow2
        run_check "$op:$mid:kill"
        if [ "$rc" -eq 137 ]; then lo=$mid; else hi=$mid; fi
    done
    echo "$lo"
}

# one_point SPEC: run the command with the fault SPEC and check the outcome
one_point() {
    local spec=$1 q n
    cp "$IMG" x.qcow2
    run_check "$spec"
    [ "$rc" -lt 124 ] || { fail "$spec: exit $rc (signal or timeout): $(cat err)"; return 1; }
    if [ "$rc" -eq "$WANT_RC" ] && cmp -s out want.out && cmp -s x.qcow2 want.qcow2; then
        return 0    # the fault changed nothing
    fi
    [ "$rc" -eq 1 ] || { fail "$spec: exit $rc, expected 1 (or $WANT_RC as without the fault); $(tail -3 err)"; return 1; }
    n=$(grep -c '^blockctl: ' err)
    [ "$n" -eq 1 ] || { fail "$spec: $n error lines: $(grep '^blockctl: ' err)"; return 1; }
    grep -q "^blockctl: .*'x\.qcow2'" err || { fail "$spec: the error does not name the file: $(cat err)"; return 1; }
    if grep -q 'No errors were found' out; then
        fail "$spec: a failed check reports a clean image"
        return 1
    fi
    if cmp -s x.qcow2 "$IMG"; then
        return 0    # failed before writing: the rerun is the fault-free run
    fi
    [ "${CMD[*]}" != check ] || { fail "$spec: check without -r changed the file"; return 1; }
    q=0
    qemu-img check x.qcow2 >qcheck 2>&1 || q=$?
    [ "$q" -eq 0 ] || [ "$q" -eq 3 ] || { fail "$spec: qemu-img check exits $q: $(grep -v '^Leaked' qcheck | head -5)"; return 1; }
    qemu_same x.qcow2 "$ORIG" || { fail "$spec: the guest view changed"; return 1; }
    if [ -n "$WANT_BITMAPS" ]; then
        [ "$(bitmaps x.qcow2)" = "$WANT_BITMAPS" ] || { fail "$spec: bitmaps changed: $(bitmaps x.qcow2)"; return 1; }
    fi
    # the same command without faults ends as on the untouched input
    run_check ""
    [ "$rc" -eq "$WANT_RC" ] || { fail "$spec: the rerun exits $rc, expected $WANT_RC: $(tail -3 err)"; return 1; }
    q=0
    qemu-img check x.qcow2 >qcheck 2>&1 || q=$?
    [ "$q" -eq "$WANT_Q" ] || { fail "$spec: after the rerun qemu-img check exits $q, expected $WANT_Q"; return 1; }
    qemu_same x.qcow2 "$ORIG" || { fail "$spec: the guest view changed after the rerun"; return 1; }
}

# fault_matrix IMAGE CMD...: every fault point for CMD on IMAGE
fault_matrix() {
    local name=$1 op act total n stride=${STRIDE:-2} offset points=0 errs=0
    shift
    CMD=("$@")
    IMG=$BATS_FILE_TMPDIR/$name.qcow2
    ORIG=$BATS_FILE_TMPDIR/$name.orig
    [ "${FULL:-0}" = 1 ] && stride=1
    # each test tries other points (the series of one image repeat)
    offset=$((BATS_TEST_NUMBER % stride))
    WANT_BITMAPS=
    [ "$name" != bitmap ] || WANT_BITMAPS=$(bitmaps "$IMG")
    # without faults
    cp "$IMG" x.qcow2
    run_check ""
    WANT_RC=$rc
    [ "$WANT_RC" -lt 124 ] || { fail "without faults: exit $rc"; return 1; }
    cp out want.out
    cp x.qcow2 want.qcow2
    WANT_Q=0
    qemu-img check x.qcow2 >/dev/null 2>&1 || WANT_Q=$?
    qemu_same x.qcow2 "$ORIG" || { fail "without faults: the guest view changed"; return 1; }
    for op in pread pwrite sync; do
        total=$(count_calls "$op")
        if [ "$op" = pread ]; then
            [ "$total" -gt 0 ] || { fail "no pread calls counted"; return 1; }
        fi
        for act in eio enospc; do
            [ "$act" = eio ] || [ "$op" = pwrite ] || continue
            for ((n = 1; n <= total; n++)); do
                if [ $(((n - 1 + offset) % stride)) -ne 0 ] && [ "$n" -ne "$total" ] && [ "$n" -ne 1 ]; then
                    continue
                fi
                points=$((points + 1))
                one_point "$op:$n:$act" || errs=$((errs + 1))
            done
        done
    done
    echo "# ${CMD[*]} on $name: $points fault points, $errs failed" >&3
    [ "$errs" -eq 0 ]
}

@test "check on a leaking image: a fault at each read, write and sync" {
    fault_matrix leak check
}
@test "check -r leaks on a leaking image: a fault at each read, write and sync" {
    fault_matrix leak check -r leaks
}
@test "check -r all on a leaking image: a fault at each read, write and sync" {
    fault_matrix leak check -r all
}
@test "check on an image needing a rebuild: a fault at each read, write and sync" {
    fault_matrix rc0 check
}
@test "check -r leaks on an image needing a rebuild: a fault at each read, write and sync" {
    fault_matrix rc0 check -r leaks
}
@test "check -r all rebuilding the refcounts: a fault at each read, write and sync" {
    fault_matrix rc0 check -r all
}
@test "check on an image with bitmaps: a fault at each read, write and sync" {
    fault_matrix bitmap check
}
@test "check -r leaks on an image with bitmaps: a fault at each read, write and sync" {
    fault_matrix bitmap check -r leaks
}
@test "check -r all on an image with bitmaps: a fault at each read, write and sync" {
    fault_matrix bitmap check -r all
}

@test "check: a read error is one line naming the file and the table, and no result" {
    cp "$BATS_FILE_TMPDIR/leak.qcow2" x.qcow2
    local n l1 l2 rb seen=
    { read -r l1; read -r l2; read -r rb; } < <(qedit x.qcow2 get l1_table_offset + l1 0 + rtentry 0)
    l2=$((l2 & 0x00fffffffffffe00))
    for ((n = 1; n <= 40; n++)); do
        run --separate-stderr env BLOCKCTL_FAULT="pread:$n:eio" "$PROG" check x.qcow2
        [ "$status" -ne 3 ] || break    # past the last read
        [ "$status" -eq 1 ] || fail "pread:$n: exit $status"
        # the error is the last line (after the diagnostics printed so far)
        [ "$(grep -c '^blockctl: ' <<<"$stderr")" -eq 1 ] || fail "pread:$n: $stderr"
        stderr=${stderr##*$'\n'}
        case $stderr in
        *"L1 table at"*) [ "$stderr" = "blockctl: check: 'x.qcow2': cannot read the L1 table at $(printf 0x%x "$l1"): Input/output error" ] ;;
        *"L2 table at"*) [ "$stderr" = "blockctl: check: 'x.qcow2': cannot read L2 table at $(printf 0x%x "$l2"): Input/output error" ] ;;
        *"refcount block at"*) [ "$stderr" = "blockctl: check: 'x.qcow2': cannot read refcount block at $(printf 0x%x "$rb"): Input/output error" ] ;;
        *) continue ;;   # the open, which has its own tests
        esac
        seen+="$stderr;"
        # as qemu-img: the internal error is counted, nothing else is claimed
        [ "$output" = $'\n1 internal errors have occurred during the check.' ]
        run --separate-stderr env BLOCKCTL_FAULT="pread:$n:eio" "$PROG" check --output=json x.qcow2
        [ "$status" -eq 1 ]
        [ "$(jq -S -c . <<<"$output")" = '{"check-errors":1,"filename":"x.qcow2","format":"qcow2"}' ]
    done
    [[ $seen == *"the L1 table at"* && $seen == *"L2 table at"* && $seen == *"refcount block at"* ]] ||
        fail "not every table failed: $seen"
    cmp x.qcow2 "$BATS_FILE_TMPDIR/leak.qcow2"
}

@test "check -r leaks: refcounts whose write failed are not written at close" {
    # a later write of the refcount without the OFLAG_COPIED fix that follows
    # it would turn a leak into a corruption (OFLAG_COPIED with refcount 1)
    cp "$BATS_FILE_TMPDIR/copied.qcow2" x.qcow2
    run --separate-stderr env BLOCKCTL_FAULT=pwrite:1:eio "$PROG" check -r leaks x.qcow2
    [ "$status" -eq 1 ]
    [[ $stderr == *"blockctl: check: 'x.qcow2': cannot write the repaired refcounts: Input/output error" ]]
    cmp x.qcow2 "$BATS_FILE_TMPDIR/copied.qcow2"
    run -0 "$PROG" check -r leaks x.qcow2
    qemu_clean x.qcow2
}
