#!/usr/bin/env bats
# The fault matrix of tests/crash/lib.bash, sampled for `make check`: for
# each operation, the first, the last and every Kth point of each sweep
# (EIO at reads, writes, syncs, truncations, allocations, renames, folder
# syncs and opens; ENOSPC, short and torn writes; kill -9 before every
# call; a power failure before every call).  After each: every image
# passes qemu-img check (0 or 3), what a user sees is as before or as
# after, a job journal is left only by a journaled command that did not
# end, and job list, job resume or job abort do what blockctl-job(1)
# says, and the documented recovery ends in the after state.  `make
# crash` runs every point.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load bats-helpers
bats_require_minimum_version 1.5.0

# every Kth point (the first and last of each sweep always) of these
# sweeps (ENOSPC where it is not also a write is EIO's twin, and power
# losses with none or all of the unflushed writes are the random subset's
# edges: `make crash` has them)
K=${CRASH_K:-25}
SAMPLE_SWEEPS='pread:eio pwrite:eio pwrite:enospc pwrite:short sync:eio ftruncate:eio
    fallocate:eio rename:eio dirsync:eio open:eio any:kill pwrite:torn any:pl-r1'

setup_file() {
    requires_cmd qemu-img qemu-io qemu-nbd nbdinfo python3
    crash_root_make blockctl-crash-bats
}

teardown_file() {
    crash_root_done
}

setup() {
    requires_cmd qemu-img qemu-io qemu-nbd nbdinfo python3
    export JOBS=${CRASH_JOBS:-${JOBS:-$(nproc 2>/dev/null || echo 2)}}
}

# matrix ARGS...: tests/crash/matrix.sh in the file's work folder, in a
# bash of its own (bats' debug trap would slow every line of it down);
# fails with its table and failures (and their reproducers)
matrix() {
    run env CRASH_OWN_ROOT=0 PROG="$PROG" bash "$BATS_TEST_DIRNAME/matrix.sh" "$@" 3>&-
    [ "$status" -eq 0 ] || { fail "$output"; return 1; }
    # a sweep whose faults never fired would mean the counts are wrong
    awk '$1 != "operation" && $1 != "total" && NF == 8 && $3 == 0 { bad = 1 } END { exit bad }' \
        <<<"$output" || { fail "no fault fired: $output"; return 1; }
}

# sample OP: the first, last and every Kth point of each of OP's sweeps
sample() {
    K=$K SWEEPS=${CRASH_SWEEPS:-$SAMPLE_SWEEPS} matrix "$1"
}

@test "crash matrix: create -f qcow2 -b" { sample create; }
@test "crash matrix: create -f qcow2 -b (raw backing file)" { sample create-raw; }
@test "crash matrix: create -o preallocation=metadata" { sample create-prealloc; }
@test "crash matrix: snapshot of three disks" { sample snapshot; }
@test "crash matrix: stream" { sample stream; }
@test "crash matrix: stream (raw base)" { sample stream-raw; }
@test "crash matrix: stream --base" { sample stream-base; }
@test "crash matrix: commit" { sample commit; }
@test "crash matrix: commit --base (raw base)" { sample commit-base; }
@test "crash matrix: commit --top" { sample commit-top; }
@test "crash matrix: mirror -O qcow2" { sample mirror; }
@test "crash matrix: mirror -O raw" { sample mirror-raw; }
@test "crash matrix: mirror -c" { sample mirror-c; }
@test "crash matrix: mirror --shallow" { sample mirror-shallow; }
@test "crash matrix: mirror -n" { sample mirror-n; }
@test "crash matrix: mirror -n --sync=bitmap --clear-bitmap" { sample mirror-bitmap; }
@test "crash matrix: mirror --sync=bitmap --clear-bitmap -B" { sample mirror-bitmap-B; }
@test "crash matrix: bitmap --add --disabled --merge --merge" { sample bitmap-add; }
@test "crash matrix: bitmap --remove" { sample bitmap-remove; }
@test "crash matrix: bitmap --clear --disable" { sample bitmap-clear; }
@test "crash matrix: bitmap --enable --merge -b" { sample bitmap-merge; }
@test "crash matrix: check -r leaks" { sample check-leaks; }
@test "crash matrix: check -r all" { sample check-all; }
@test "crash matrix: check -r all (many corruptions)" { sample check-all-big; }

# ---------------------------------------------- the harness catches bad tools

# fake MODE: the path of a blockctl that misbehaves so when a fault is
# injected (and says the fault fired), and is the real one otherwise
fake() {
    local f=$BATS_TEST_TMPDIR/fake-$1
    {
        echo '#!/bin/bash'
        echo 'if [ -n "${BLOCKCTL_FAULT:-}" ]; then'
        echo '    [ -n "${BLOCKCTL_FAULT_COUNT:-}" ] && echo "fired 1" >>"$BLOCKCTL_FAULT_COUNT"'
        case $1 in
        damage) echo '    truncate -s 1000 top.qcow2; echo "fake: damaged" >&2; exit 1' ;;
        silent) echo '    exit 0' ;;
        leave) echo '    echo junk >t.qcow2.part; echo "fake: left t.qcow2.part" >&2; exit 1' ;;
        crash) echo '    kill -SEGV $$' ;;
        esac
        echo 'fi'
        printf 'exec %q "$@"\n' "$PROG"
    } >"$f"
    chmod +x "$f"
    echo "$f"
}

# point MODE OP SWEEP N: matrix.sh --point with the fake blockctl MODE
point() {
    run env PROG="$(fake "$1")" CRASH_OWN_ROOT=0 CRASH_NOCACHE=1 \
        bash "$BATS_TEST_DIRNAME/matrix.sh" --point "${@:2}" 3>&-
    rm -rf "$CRASH_ROOT/pts/$2/${3%%:*}-${3#*:}-$4"*
}

@test "the harness sees a damaged image, a wrong view and a failed rerun" {
    point damage stream pwrite:eio 3
    [ "$status" -eq 1 ] || fail "exit $status: $output"
    [[ $output == *"damaged 1, wrong view 1, failed rerun 1"* ]] || fail "$output"
}

@test "the harness sees an exit 0 that is not the after state" {
    point silent stream pwrite:eio 3
    [ "$status" -eq 1 ] || fail "exit $status: $output"
    [[ $output == *"wrong view 1"* && $output == *"exit 0 but not the after state"* ]] || fail "$output"
}

@test "the harness sees a failed mirror that leaves a broken file behind" {
    point leave mirror pwrite:eio 3
    [ "$status" -eq 1 ] || fail "exit $status: $output"
    [[ $output == *"damaged 1"* && $output == *"files left after a failure"* ]] || fail "$output"
}

@test "the harness sees a crash (a signal other than the injected kill)" {
    point crash stream pread:eio 1
    [ "$status" -eq 1 ] || fail "exit $status: $output"
    [[ $output == *"bad exit 1"* ]] || fail "$output"
}

# ---------------------------------------------- the counting mode (lib/io.c)

@test "BLOCKCTL_FAULT_COUNT: the count is where the sweep ends" {
    # shellcheck source=tests/crash/lib.bash
    . "$BATS_TEST_DIRNAME/lib.bash"
    crash_init
    crash_prepare stream
    op_def stream
    export BLOCKCTL_STATE_DIR=$BATS_TEST_TMPDIR/state
    local n c rc
    n=$(crash_count stream pwrite)
    [ "$n" -gt 1 ]
    # the same run again counts the same
    cp -a "$CRASH_ROOT/ref/stream/before" "$BATS_TEST_TMPDIR/w"
    cd "$BATS_TEST_TMPDIR/w"
    run -0 env BLOCKCTL_FAULT_COUNT="$BATS_TEST_TMPDIR/c1" "$PROG" "${CMD[@]}"
    [ "$(awk '$1 == "pwrite" { print $2 }' "$BATS_TEST_TMPDIR/c1")" = "$n" ]
    [ "$(awk '$1 == "fired" { print $2 }' "$BATS_TEST_TMPDIR/c1")" = 0 ]
    # the last counted write fails; one past it is never reached
    for c in "$n" "$((n + 1))"; do
        cd "$BATS_TEST_TMPDIR"
        rm -rf w c2 "$BLOCKCTL_STATE_DIR"
        cp -a "$CRASH_ROOT/ref/stream/before" w
        cd w
        rc=0
        BLOCKCTL_FAULT="pwrite:$c:eio" BLOCKCTL_FAULT_COUNT="$BATS_TEST_TMPDIR/c2" \
            "$PROG" "${CMD[@]}" 2>/dev/null || rc=$?
        if [ "$c" -eq "$n" ]; then
            [ "$rc" -eq 1 ] || fail "pwrite:$c:eio: exit $rc"
            [ "$(awk '$1 == "fired" { print $2 }' "$BATS_TEST_TMPDIR/c2")" = 1 ]
        else
            [ "$rc" -eq 0 ] || fail "pwrite:$c:eio: exit $rc"
            [ "$(awk '$1 == "fired" { print $2 }' "$BATS_TEST_TMPDIR/c2")" = 0 ]
        fi
    done
}

@test "BLOCKCTL_FAULT_COUNT: sync and any are the sums, fired counts every failed call" {
    cd "$BATS_TEST_TMPDIR"
    run -0 env BLOCKCTL_FAULT_COUNT="$PWD/c" "$PROG" create -q -f qcow2 x.qcow2 1M
    awk '{ v[$1] = $2 } END {
        any = v["pread"] + v["pwrite"] + v["fsync"] + v["fdatasync"] + v["ftruncate"]
        any += v["fallocate"] + v["rename"] + v["dirsync"] + v["open"] + v["unlink"]
        if (v["sync"] != v["fsync"] + v["fdatasync"] || v["any"] != any || v["any"] == 0) exit 1
    }' c || fail "inconsistent counts: $(cat c)"
    # every read fails: each one counts as fired
    run -1 env BLOCKCTL_FAULT='pread:*:eio' BLOCKCTL_FAULT_COUNT="$PWD/c2" "$PROG" info x.qcow2
    [ "$(awk '$1 == "fired" { print $2 }' c2)" = "$(awk '$1 == "pread" { print $2 }' c2)" ]
    # counts are appended: two runs, two sets of lines
    run -0 env BLOCKCTL_FAULT_COUNT="$PWD/c3" "$PROG" info x.qcow2
    run -0 env BLOCKCTL_FAULT_COUNT="$PWD/c3" "$PROG" info x.qcow2
    [ "$(grep -c '^any ' c3)" -eq 2 ]
}

# ---------------------------------------------- full sweeps of fixed bugs

@test "snapshot killed before any call: each overlay is absent or complete" {
    K=1 SWEEPS=any:kill matrix snapshot
}

# ---------------------------------------------- the write log (lib/io.c) and its replay

# iolog_types LOG: the record types of a BLOCKCTL_IOLOG file, counted
iolog_types() {
    /usr/bin/python3 - "$1" <<'PY'
import struct, sys, collections
H = struct.Struct("=IIQQQQQQQ")
d = open(sys.argv[1], "rb").read()
p, c, seq = 0, collections.Counter(), 0
names = {1: "open", 2: "write", 3: "fsync", 4: "fdatasync", 5: "ftruncate", 6: "fallocate",
         7: "rename", 8: "dirsync", 9: "unlink"}
while p < len(d):
    m, t, s, dev, ino, off, ln, aux, pl = H.unpack_from(d, p)
    assert m == 0x4C4F4942 and s == seq + 1, "bad record at %d" % p
    seq = s
    p += H.size + pl
    c[names[t]] += 1
print(" ".join("%s=%d" % kv for kv in sorted(c.items())))
PY
}

@test "BLOCKCTL_IOLOG: every write, sync, truncation and rename of a run, in order" {
    cd "$BATS_TEST_TMPDIR"
    run -0 env BLOCKCTL_IOLOG="$PWD/log" "$PROG" create -q -f qcow2 x.qcow2 1M
    run -0 iolog_types log
    [[ $output == *open=* && $output == *write=* && $output == *fdatasync=* &&
        $output == *rename=1* && $output == *dirsync=* ]] || fail "records: $output"
    # unset, nothing is written anywhere
    run -0 env -u BLOCKCTL_IOLOG "$PROG" create -q -f qcow2 y.qcow2 1M
    [ "$(ls)" = "$(printf 'log\nx.qcow2\ny.qcow2')" ]
}

# killed_mirror W FAULT: the matrix's mirror (crash_prepare and op_def
# mirror done) run from its before state in a new folder W (then the
# current one), its files' inodes in W.inodes, with a write log W.log and
# a state folder W.state, killed by the BLOCKCTL_FAULT rule FAULT
killed_mirror() {
    local w=$1
    rm -rf "$w" "$w".*
    cp -a "$CRASH_ROOT/ref/mirror/before" "$w"
    cd "$w" || return 1
    stat -c "%i $w/%n" -- * >"$w.inodes"
    run -137 env BLOCKCTL_IOLOG="$w.log" BLOCKCTL_STATE_DIR="$w.state" BLOCKCTL_FAULT="$2" \
        "$PROG" "${CMD[@]}"
}

@test "iolog-replay: 'all' leaves the killed run's files as they are; 'none' drops what was not flushed" {
    # shellcheck source=tests/crash/lib.bash
    . "$BATS_TEST_DIRNAME/lib.bash"
    crash_init
    crash_prepare mirror
    op_def mirror
    local n sub w s1 s2 out
    n=$(crash_count mirror any)
    for sub in all none; do
        w=$BATS_TEST_TMPDIR/w-$sub
        # killed mid-copy, between two checkpoints (writes not yet flushed)
        killed_mirror "$w" "pwrite:$(crash_count mirror pwrite | awk '{ print int($1 * 2 / 3) }'):kill"
        s1=$(cksum -- * "$w.state"/jobs/*)
        run -0 /usr/bin/python3 "$CRASH_TESTS_DIR/tools/iolog-replay.py" "$w.log" "$w.inodes" \
            "$CRASH_ROOT/ref/mirror/before" "$sub"
        out=$output
        s2=$(cksum -- * "$w.state"/jobs/*)
        if [ $sub = all ]; then
            [ "$s1" = "$s2" ] || fail "'all' changed files: $out"
            [[ $out == *"rewritten 0"* ]] || fail "$out"
        else
            [[ $out =~ unflushed\ ([1-9][0-9]*)\ kept\ 0 ]] || fail "no unflushed writes dropped: $out"
            [ "$s1" != "$s2" ] || fail "'none' changed nothing: $out"
            # (what a resume then finishes)
            run -0 env BLOCKCTL_STATE_DIR="$w.state" "$PROG" job resume mirror
            qemu-img compare -q top.qcow2 t.qcow2
        fi
    done
    [ "$n" -gt 0 ]
}

@test "BLOCKCTL_IOLOG and iolog-replay: an unlink is a namespace operation, undone until its folder is synced" {
    # shellcheck source=tests/crash/lib.bash
    . "$BATS_TEST_DIRNAME/lib.bash"
    crash_init
    crash_prepare mirror
    op_def mirror
    local n sub w out j
    # the last folder sync of a mirror is the one of its journal's folder,
    # after the journal was removed
    n=$(crash_count mirror dirsync)
    [ "$(crash_count mirror unlink)" -ge 1 ]
    for sub in all none; do
        w=$BATS_TEST_TMPDIR/u-$sub
        # killed before that sync: the journal is gone, but not for sure
        killed_mirror "$w" "dirsync:$n:kill"
        run -0 iolog_types "$w.log"
        [[ $output == *unlink=1* ]] || fail "records: $output"
        [ -z "$(ls "$w.state/jobs")" ] || fail "the run left $(ls "$w.state/jobs")"
        run -0 /usr/bin/python3 "$CRASH_TESTS_DIR/tools/iolog-replay.py" "$w.log" "$w.inodes" \
            "$CRASH_ROOT/ref/mirror/before" "$sub"
        out=$output
        if [ $sub = all ]; then
            [[ $out == *"undone 0"* ]] || fail "$out"
            [ -z "$(ls "$w.state/jobs")" ] || fail "'all' brought back $(ls "$w.state/jobs")"
        else
            # the removal is undone: the journal is back, as it was last
            # saved (the target installed), with its permissions
            [[ $out =~ namespace\ ([0-9]+)\ undone\ ([1-9][0-9]*) ]] || fail "$out"
            j=("$w.state/jobs/"*.json)
            [ ${#j[@]} -eq 1 ] && [ -f "${j[0]}" ] || fail "no journal back: $(ls "$w.state/jobs"); $out"
            [ "$(stat -c %a "${j[0]}")" = 600 ] || fail "mode $(stat -c %a "${j[0]}")"
            [ "$(jq -r .type "${j[0]}")" = mirror ] || fail "$(cat "${j[0]}")"
            run -0 env BLOCKCTL_STATE_DIR="$w.state" "$PROG" job list
            [[ $output == *mirror* ]] || fail "job list: $output"
            # (and the job ends: the target is in place already)
            run -0 env BLOCKCTL_STATE_DIR="$w.state" "$PROG" job resume mirror
            [ -z "$(ls "$w.state/jobs")" ] || fail "job resume left $(ls "$w.state/jobs")"
            qemu-img compare -q top.qcow2 t.qcow2
        fi
    done
}
