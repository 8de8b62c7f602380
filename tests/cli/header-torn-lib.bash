#!/bin/bash
# header-torn-lib.bash - the work of header-torn.bats, run as a plain bash
# process (bats traces every command of a test, which makes these loops
# slow): bash header-torn-lib.bash FUNCTION ARGS...
# Needs PROG and SCRATCH (the fixtures and references, see setup).
# SPDX-License-Identifier: GPL-2.0-or-later
set -u
BATS_TEST_DIRNAME=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bats_require_minimum_version() { :; }
# shellcheck source=../helpers.bash
. "$BATS_TEST_DIRNAME/../helpers.bash"

POWERCUT="$TESTS_DIR/data/powercut.py"
STRIDE=${STRIDE:-3}
[ "${FULL:-0}" = 1 ] && STRIDE=1
# 200 characters: three of them make a backing file name that does not fit
# in the first sector of the header
D=dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd
LD=$D/$D/$D
T=${T:-$SCRATCH}

# ------------------------------------------------------------------ helpers

JQ_MERGE='sort_by(.[0]) | reduce .[] as $r ([]; if length > 0 and .[-1][1] >= $r[0]
    then .[-1][1] = ([.[-1][1], $r[1]] | max) else . + [$r] end)'

# nbd_ranges IMG NAME: the dirty ranges of bitmap NAME as qemu-nbd -B exports
# them (nbdinfo --map), merged
nbd_ranges() {
    local map
    map=$(nbdinfo --map="qemu:dirty-bitmap:$2" --json -- [ qemu-nbd -r -f qcow2 -B "$2" "$1" ] 3>&-) ||
        { fail "qemu-nbd -B $2 + nbdinfo --map on $1 failed"; return 1; }
    jq -c "[.[] | select(.type % 2 == 1) | [.offset, .offset + .length]] | $JQ_MERGE" <<<"$map"
}

# bc_ranges IMG NAME: the same from blockctl bitmap --dump
bc_ranges() {
    local out
    out=$(timeout 30 "$PROG" bitmap --dump --output=json "$1" "$2") || return 1
    jq -c "[.[] | [.start, .start + .length]] | $JQ_MERGE" <<<"$out"
}

# bm_state IMG: two lines from qemu-img info: the backing file (name and
# format as recorded) and the bitmaps (name, granularity, enabled) sorted by
# name; then the names of the bitmaps left in use (inconsistent)
bm_state() {
    local info
    info=$(qemu-img info -U --output=json "$1") || return 1
    jq -r '[."format-specific".data.bitmaps // [] | .[]] as $b |
        ({backing: (."backing-filename" // ""), bfmt: (."backing-filename-format" // ""),
          bitmaps: ([$b[] | {name, granularity, auto: ((.flags | index("auto")) != null)}] |
            sort_by(.name))} | tojson),
        ([$b[] | select((.flags | index("in-use")) != null) | .name] | join(" "))' <<<"$info"
}

# ref_capture DIR IMG: what QEMU reads of IMG (with its chain), in DIR:
# view.raw, bitmaps (bm_state's first line), names, and for each bitmap
# its ranges as qemu-nbd exports them, which blockctl's dump (kept in
# bc.NAME to compare with later) must agree with
ref_capture() {
    local d=$1 img=$2 st n
    mkdir -p "$d" || return 1
    qemu-img convert -U -O raw "$img" "$d/view.raw" || return 1
    md5sum <"$d/view.raw" >"$d/view.sum" || return 1
    st=$(bm_state "$img") || return 1
    head -n 1 <<<"$st" >"$d/bitmaps"
    [ -z "$(tail -n +2 <<<"$st")" ] || { echo "reference $img has bitmaps in use" >&2; return 1; }
    jq -r '.bitmaps[].name' "$d/bitmaps" >"$d/names"
    while read -r n; do
        [ "$(nbd_ranges "$img" "$n")" = "$(bc_ranges "$img" "$n")" ] ||
            { echo "reference $img: blockctl and qemu-nbd disagree on bitmap $n" >&2; return 1; }
        "$PROG" bitmap --dump --output=json "$img" "$n" >"$d/bc.$n" || return 1
    done <"$d/names"
}

# consistent IMG: qemu-img and blockctl open IMG, qemu-img check finds
# leaks at most
consistent() {
    local out rc=0
    out=$(qemu-img check "$1" 2>&1) || rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] ||
        { fail "$WHAT: qemu-img check $1 exited $rc: $out"; return 1; }
    out=$(timeout 30 "$PROG" info "$1" 2>&1) ||
        { fail "$WHAT: blockctl cannot open $1: $out"; return 1; }
}

# as_one IMG [noview] REFDIR...: consistent, and reads as one of REFDIRs:
# guest view (unless noview), bitmap list, and the bits of every bitmap
# not left in use
as_one() {
    local img=$1 view=1 r st list inuse n ok sum
    shift
    if [ "$1" = noview ]; then
        view=0
        shift
    fi
    consistent "$img" || return 1
    st=$(bm_state "$img") || { fail "$WHAT: qemu-img info $img failed"; return 1; }
    list=$(head -n 1 <<<"$st")
    inuse=" $(tail -n +2 <<<"$st") "
    local -A dump=() same=()
    for r in "$@"; do
        [ "$list" = "$(<"$r/bitmaps")" ] || continue
        if [ "$view" = 1 ]; then
            # (one comparison per distinct view)
            sum=$(<"$r/view.sum")
            if [ -z "${same[$sum]+set}" ]; then
                same[$sum]=0
                qemu-img compare -U -f qcow2 -F raw "$img" "$r/view.raw" >/dev/null 2>&1 &&
                    same[$sum]=1
            fi
            [ "${same[$sum]}" = 1 ] || continue
        fi
        ok=1
        while read -r n; do
            [[ $inuse == *" $n "* ]] && continue
            [ -n "${dump[$n]+set}" ] ||
                dump[$n]=$("$PROG" bitmap --dump --output=json "$img" "$n" 2>&1)
            [ "${dump[$n]}" = "$(<"$r/bc.$n")" ] || { ok=0; break; }
        done <"$r/names"
        [ "$ok" = 0 ] || return 0
    done
    fail "$WHAT: $img reads as none of: $*"
    qemu-img info -U "$img" >&2
    return 1
}

# fresh SET: a private copy of fixture SET in ./w
fresh() {
    cd "$T" || return 1
    rm -rf w
    cp -r "$SCRATCH/fx/$1" w
}

# ------------------------------------------------------------------ fixtures

# setup: the fixtures, in $SCRATCH/fx
setup() {
    local fx=$SCRATCH/fx ref=$SCRATCH/ref
    mkdir -p "$fx" "$ref"
    cd "$fx" || return 1

    # st: top (bitmap b0, disabled, and b1, which the later writes went to) over base
    mkdir st && (
        cd st || exit 1
        mkq base.qcow2 32M && qio base.qcow2 'write -P 0x11 0 4M' 'write -P 0x12 12M 2M' &&
            mkq top.qcow2 32M backing_file=base.qcow2,backing_fmt=qcow2 &&
            qemu-img bitmap --add top.qcow2 b0 &&
            qio top.qcow2 'write -P 0x21 1M 64k' 'write -P 0x22 13M 192k' &&
            qemu-img bitmap --disable top.qcow2 b0 &&
            qemu-img bitmap --add -g 131072 top.qcow2 b1 &&
            qio top.qcow2 'write -P 0x23 20M 128k'
    ) || return 1

    # cm: top (t0) over mid (m0) over a smaller base (k0, 4k clusters:
    # commit grows it, moving its L1 table)
    mkdir cm && (
        cd cm || exit 1
        mkq base.qcow2 16M cluster_size=4096 && qemu-img bitmap --add base.qcow2 k0 &&
            qio base.qcow2 'write -P 0x11 0 1M' &&
            mkq mid.qcow2 32M backing_file=base.qcow2,backing_fmt=qcow2 &&
            qemu-img bitmap --add mid.qcow2 m0 &&
            qio mid.qcow2 'write -P 0x31 512k 1M' 'write -P 0x32 20M 256k' &&
            mkq top.qcow2 32M backing_file=mid.qcow2,backing_fmt=qcow2 &&
            qemu-img bitmap --add top.qcow2 t0 &&
            qio top.qcow2 'write -P 0x41 2M 64k'
    ) || return 1

    # ln: the same with backing file names of 600+ characters
    mkdir -p "ln/$LD" && (
        cd ln || exit 1
        mkq "$LD/base.qcow2" 32M && qio "$LD/base.qcow2" 'write -P 0x11 0 2M' &&
            mkq "$LD/mid.qcow2" 32M backing_file=base.qcow2,backing_fmt=qcow2 &&
            qio "$LD/mid.qcow2" 'write -P 0x31 1M 2M' &&
            mkq top.qcow2 32M "backing_file=$LD/mid.qcow2,backing_fmt=qcow2" &&
            qemu-img bitmap --add top.qcow2 b0 && qemu-img bitmap --add top.qcow2 b1 &&
            qio top.qcow2 'write -P 0x41 2M 64k' &&
            qemu-img bitmap --disable top.qcow2 b1
    ) || return 1

    # ms: the README's nightly recipe: a disk with bitmap 'backup' that
    # recorded the writes since the full backup
    mkdir ms && (
        cd ms || exit 1
        mkq src.qcow2 32M && qio src.qcow2 'write -P 0x51 0 2M' &&
            qemu-img convert -O qcow2 src.qcow2 full.qcow2 &&
            qemu-img bitmap --add src.qcow2 backup &&
            qio src.qcow2 'write -P 0x52 1M 128k' 'write -P 0x53 9M 64k'
    ) || return 1

    # the fixtures are as meant (the references check that each operation
    # changes something)
    [ "$(qemu-img info --output=json st/top.qcow2 | jq '."format-specific".data.bitmaps | length')" = 2 ] ||
        return 1
}

# ref SET OP IMG: the reference directory (ref_capture) for image IMG of
# fixture SET after OP ran on it without faults (OP '-': before), made on
# first use
ref() {
    local set=$1 op=$2 img=$3 d=$SCRATCH/ref/$1.$2 tmp f
    if [ ! -e "$d.done" ]; then
        tmp=$SCRATCH/ref/tmp
        rm -rf "$tmp" && cp -r "$SCRATCH/fx/$set" "$tmp" || return 1
        if [ "$op" != - ]; then
            (cd "$tmp" && run_op "$op") >"$SCRATCH/ref/err" 2>&1 ||
                { cat "$SCRATCH/ref/err" >&2; return 1; }
        fi
        for f in $(imgs_of "$set"); do
            ref_capture "$d/$f" "$tmp/$f" || return 1
        done
        rm -rf "$tmp"
        if [ "$op" != - ]; then
            # the operation changes the backing file or the bitmaps
            f=$(ref "$set" - "$img") || return 1
            ! cmp -s "$f/bitmaps" "$d/$img/bitmaps" ||
                ! cmp -s <(cat "$f"/bc.*) <(cat "$d/$img"/bc.*) ||
                { echo "reference: $op changes nothing" >&2; return 1; }
        fi
        touch "$d.done"
    fi
    echo "$d/$img"
}

# imgs_of SET: the images of a fixture whose contents are compared
imgs_of() {
    case $1 in
    cm) echo top.qcow2 base.qcow2 ;;
    ms) echo src.qcow2 ;;
    *) echo top.qcow2 ;;
    esac
}

# run_op OP: the operation, in the current folder (a copy of its fixture)
run_op() {
    case $1 in
    stream) "$PROG" stream top.qcow2 ;;
    mergeflags) "$PROG" bitmap --enable --merge=b0 --disable top.qcow2 b1 ;;
    add) "$PROG" bitmap --add top.qcow2 b2 ;;
    clear) "$PROG" bitmap --clear top.qcow2 b1 ;;
    merge) "$PROG" bitmap --merge=b0 top.qcow2 b1 ;;
    remove) "$PROG" bitmap --remove top.qcow2 b0 ;;
    commit) "$PROG" commit --top mid.qcow2 top.qcow2 ;;
    lstream) "$PROG" stream --base "$LD/base.qcow2" top.qcow2 ;;
    lcommit) "$PROG" commit --top "$LD/mid.qcow2" top.qcow2 ;;
    ladd) "$PROG" bitmap --add top.qcow2 b2 ;;
    nightly)
        "$PROG" mirror --sync=bitmap --bitmap backup --clear-bitmap -B full.qcow2 -F qcow2 \
            -O qcow2 src.qcow2 inc.qcow2
        ;;
    *) echo "run_op: unknown $1" >&2; return 2 ;;
    esac
}

# set_of OP: the fixture an operation works on
set_of() {
    case $1 in
    commit) echo cm ;;
    l*) echo ln ;;
    nightly) echo ms ;;
    *) echo st ;;
    esac
}

# verify OP: the images of ./w after OP was interrupted read as before or
# as after it
verify() {
    local s a b
    s=$(set_of "$1")
    case $1 in
    commit)
        a=$(ref cm - top.qcow2) && b=$(ref cm commit top.qcow2) || return 1
        as_one w/top.qcow2 "$a" "$b" || return 1
        # part of the data may be in the base already (its bitmap then in
        # use): its bitmaps as before or after
        a=$(ref cm - base.qcow2) && b=$(ref cm commit base.qcow2) || return 1
        as_one w/base.qcow2 noview "$a" "$b" || return 1
        consistent w/mid.qcow2
        ;;
    nightly)
        a=$(ref ms - src.qcow2) && b=$(ref ms nightly src.qcow2) || return 1
        as_one w/src.qcow2 "$a" "$b" || return 1
        consistent w/full.qcow2
        ;;
    *)
        a=$(ref "$s" - top.qcow2) && b=$(ref "$s" "$1" top.qcow2) || return 1
        as_one w/top.qcow2 "$a" "$b"
        ;;
    esac
}

# sync_fail_sweep OP FILE [+]: with the Nth sync on FILE failing (N+: that
# and every later one), for N = 1, 2, ... until OP succeeds: the images
# read as before or after
sync_fail_sweep() {
    local op=$1 file=$2 plus=${3:-} n rc failed=0
    for ((n = 1; n < 100; n++)); do
        fresh "$(set_of "$op")" || return 1
        rc=0
        (cd w && BLOCKCTL_FAULT="sync:$n$plus:eio:$file" run_op "$op") >out 2>err || rc=$?
        WHAT="$op with sync:$n$plus:eio:$file (exit $rc)"
        [ "$rc" -lt 128 ] || { fail "$WHAT: crashed: $(cat err)"; return 1; }
        ! grep -qE 'Sanitizer|runtime error' err || { fail "$WHAT: $(cat err)"; return 1; }
        verify "$op" || return 1
        if [ "$rc" -eq 0 ]; then
            [ "$failed" -gt 0 ] || { fail "$op: no sync on $file failed it"; return 1; }
            return 0
        fi
        [ -s err ] || { fail "$WHAT: failed without a message"; return 1; }
        failed=$((failed + 1))
        [ -z "$plus" ] || [ "$n" -lt 30 ] || return 0
    done
    fail "$op: still failing at sync $n"
}

# torn_sweep OP FILE: the Nth write on FILE is cut in half and the process
# killed, for N = 1, 2, ... until OP no longer reaches it.  FILE opens and
# passes qemu-img check each time; every STRIDE-th time (and the last) all
# the images read as before or after (verify)
torn_sweep() {
    local op=$1 file=$2 n rc
    for ((n = 1; n < 1000; n++)); do
        fresh "$(set_of "$op")" || return 1
        rc=0
        (cd w && BLOCKCTL_FAULT="pwrite:$n:torn:$file" run_op "$op") >out 2>err || rc=$?
        WHAT="$op with pwrite:$n:torn:$file (exit $rc)"
        if [ "$rc" -eq 0 ] || [ $(((n - 1) % STRIDE)) -eq 0 ]; then
            verify "$op" || return 1
        else
            consistent "w/$file" || return 1
        fi
        if [ "$rc" -eq 0 ]; then
            [ "$n" -gt 1 ] || { fail "$op never wrote $file"; return 1; }
            return 0
        fi
        [ "$rc" -eq 137 ] || { fail "$WHAT: $(cat err)"; return 1; }
    done
    fail "$op: more than 1000 writes"
}

# powercut OP FILE: kill OP before each sync on FILE (the state the sync
# would make durable); between two such states, every subset of the header
# sectors that changed (tests/data/powercut.py) reads as before or after.
# (Without the two-step header write, a header change spans two sectors.)
powercut() {
    local op=$1 file=$2 j rc prev cur v nh=0 cs
    local k=$T/k
    rm -rf "$k" && mkdir -p "$k" || return 1
    fresh "$(set_of "$op")" || return 1
    cp "w/$file" "$k/0" || return 1
    cs=$(qemu-img info -U --output=json "w/$file" | jq -r '."cluster-size"')
    for ((j = 1; j < 200; j++)); do
        fresh "$(set_of "$op")" || return 1
        rc=0
        (cd w && BLOCKCTL_FAULT="sync:$j:kill:$file" run_op "$op") >out 2>err || rc=$?
        cp "w/$file" "$k/$j" || return 1
        [ "$rc" -eq 0 ] && break
        [ "$rc" -eq 137 ] || { fail "$op with sync:$j:kill:$file exited $rc: $(cat err)"; return 1; }
    done
    [ "$rc" -eq 0 ] || { fail "$op: more than 200 syncs"; return 1; }
    for ((prev = 0, cur = 1; cur <= j; prev++, cur++)); do
        cmp -s -n "$cs" "$k/$prev" "$k/$cur" && continue
        nh=$((nh + 1))
        for v in $(python3 -S "$POWERCUT" "$k/$prev" "$k/$cur" "$cs" "$k/v$cur"); do
            fresh "$(set_of "$op")" || return 1
            cp "$v" "w/$file" || return 1
            WHAT="$op, power cut between syncs $prev and $cur on $file (${v##*/})"
            verify "$op" || return 1
        done
    done
    # (a header change within one sector has no partial states)
    [ "$nh" -gt 0 ] || { fail "$op: the header of $file never changed"; return 1; }
}


# full: FULL=1 (or STRIDE=1) runs every case; otherwise a sample
full() {
    [ "$STRIDE" -eq 1 ]
}

# after_failed_clear: a failed bitmap change leaves the image usable
after_failed_clear() {
    fresh st || return 1
    local n rc
    for ((n = 1; n < 20; n++)); do
        cp "$SCRATCH/fx/st/top.qcow2" w/top.qcow2
        rc=0
        (cd w && BLOCKCTL_FAULT="sync:$n:eio:top.qcow2" run_op clear) 2>err || rc=$?
        if [ "$rc" -ge 128 ] || grep -qE 'Sanitizer|runtime error' err; then
            fail "clear with sync:$n:eio exited $rc: $(cat err)"
            return 1
        fi
        [ "$rc" -ne 0 ] || break
        (cd w && run_op clear) || { fail "clear after a failed clear (sync $n) exited $?"; return 1; }
        WHAT="clear after a failed clear (sync $n)"
        as_one w/top.qcow2 "$(ref st clear top.qcow2)" || return 1
    done
    [ "$n" -gt 1 ] || { fail "the first sync never failed clear"; return 1; }
}

"$@"
