#!/usr/bin/env bats
# blockctl bitmap against QEMU: bitmaps blockctl adds, changes and removes
# are seen so by qemu-img info / qemu-img check / qemu-nbd -B + nbdinfo, and
# the other way round; qemu-io's writes are recorded in them; a bitmap left
# in use by a kill -9 of a writer (qemu-io, qemu-nbd, blockctl) is
# inconsistent and refused; blockctl's own writes (mirror -n, commit) mark
# exactly what they write, stream marks nothing.  The oracle is always
# QEMU: qemu-img info for names / granularities / flags, qemu-nbd -B and
# nbdinfo --map for the dirty ranges, or the same action done by qemu-img
# on a copy of the image.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup() {
    requires_qemu
    requires_cmd qemu-nbd nbdinfo
    cd "$BATS_TEST_TMPDIR" || return 1
}

teardown() {
    copy_teardown
}

# ------------------------------------------------------------------ helpers

# jq: sort [start,end) pairs and merge the overlapping / adjacent ones
JQ_MERGE='sort_by(.[0]) | reduce .[] as $r ([]; if length > 0 and .[-1][1] >= $r[0]
    then .[-1][1] = ([.[-1][1], $r[1]] | max) else . + [$r] end)'

# bc_ranges IMG NAME: blockctl's --dump --output=json as merged ranges
bc_ranges() {
    local out rc=0
    out=$(timeout 30 "$PROG" bitmap --dump --output=json "$1" "$2") || rc=$?
    [ "$rc" -eq 0 ] || { fail "blockctl bitmap --dump $1 $2 exited $rc"; return 1; }
    jq -c "[.[] | [.start, .start + .length]] | $JQ_MERGE" <<<"$out" ||
        { fail "--dump printed invalid JSON: $out"; return 1; }
}

# nbd_ranges IMG NAME: the dirty ranges qemu-nbd -r -B NAME exports, as
# nbdinfo --map=qemu:dirty-bitmap:NAME reports them, merged
nbd_ranges() {
    local map
    # nbdinfo runs qemu-nbd itself (socket activation) and waits for it
    map=$(nbdinfo --map="qemu:dirty-bitmap:$2" --json -- [ qemu-nbd -r -f qcow2 -B "$2" "$1" ] 3>&-) ||
        { fail "qemu-nbd -B $2 + nbdinfo --map on $1 failed"; return 1; }
    jq -c "[.[] | select(.type % 2 == 1) | [.offset, .offset + .length]] | $JQ_MERGE" <<<"$map"
}

# want_ranges GRAN SIZE START:LEN...: the ranges a bitmap of granularity
# GRAN on a disk of SIZE bytes marks for these writes, merged
want_ranges() {
    local g=$1 size=$2 r s l a b out=""
    shift 2
    for r in "$@"; do
        s=${r%%:*} l=${r##*:}
        a=$((s / g * g)) b=$(((s + l + g - 1) / g * g))
        [ "$b" -le "$size" ] || b=$size
        out+="[$a,$b],"
    done
    jq -c "$JQ_MERGE" <<<"[${out%,}]"
}

# same_ranges WHAT A B: two range lists are equal
same_ranges() {
    [ "$2" = "$3" ] || { fail "$1: ranges differ: $2 != $3"; return 1; }
}

# dump_agrees IMG NAME [WANT]: blockctl's dump equals qemu-nbd's (and WANT)
dump_agrees() {
    local ours theirs
    ours=$(bc_ranges "$1" "$2") || return 1
    theirs=$(nbd_ranges "$1" "$2") || return 1
    same_ranges "$1 $2: blockctl --dump vs qemu-nbd -B" "$ours" "$theirs" || return 1
    if [ $# -ge 3 ]; then
        same_ranges "$1 $2: qemu-nbd -B vs the writes" "$theirs" "$3" || return 1
    fi
}

# qbitmaps IMG: qemu-img info's bitmap list (sorted by name, flags sorted)
qbitmaps() {
    qemu-img info -U --output=json "$1" |
        jq -c '[."format-specific".data.bitmaps // [] | .[] | .flags |= sort] | sort_by(.name)'
}

# qbitmap IMG NAME: one bitmap of qemu-img info ({"name","granularity","flags"}), or null
qbitmap() {
    qemu-img info -U --output=json "$1" |
        jq -c --arg n "$2" '[."format-specific".data.bitmaps // [] | .[] | select(.name == $n) | .flags |= sort] | .[0]'
}

# bm_is IMG NAME GRAN FLAGS_JSON: qemu-img info shows that bitmap so
bm_is() {
    local got want
    got=$(qbitmap "$1" "$2")
    want=$(jq -c --arg n "$2" --argjson g "$3" '{flags: (. | sort), name: $n, granularity: $g}' <<<"$4")
    [ "$(jq -S -c . <<<"$got")" = "$(jq -S -c . <<<"$want")" ] ||
        { fail "$1: qemu-img info shows bitmap $2 as $got, expected $want"; return 1; }
}

# bc_list IMG: blockctl's --list --output=json
bc_list() {
    local out rc=0
    out=$(timeout 30 "$PROG" bitmap --list --output=json "$1") || rc=$?
    [ "$rc" -eq 0 ] || { fail "blockctl bitmap --list $1 exited $rc"; return 1; }
    jq -c . <<<"$out" || { fail "--list printed invalid JSON: $out"; return 1; }
}

# bc_field IMG NAME JQ: a field of NAME's --list entry
bc_field() {
    bc_list "$1" | jq -r --arg n "$2" ".[] | select(.name == \$n) | $3"
}

# ok_bc ARGS...: blockctl ARGS must exit 0 without printing anything
ok_bc() {
    run --separate-stderr timeout 60 "$PROG" "$@"
    [ "$status" -eq 0 ] || { fail "blockctl $* exited $status: $stderr"; return 1; }
    [ -z "$stderr" ] || { fail "blockctl $* printed on stderr: $stderr"; return 1; }
}

# qimg ARGS...: qemu-img ARGS, which must succeed
qimg() {
    local out
    out=$(qemu-img "$@" 2>&1) || { fail "qemu-img $*: $out"; return 1; }
}

# inuse_flag IMG NAME: qemu-img info shows NAME in use
inuse_flag() {
    qemu-img info -U --output=json "$1" |
        jq -e --arg n "$2" '."format-specific".data.bitmaps[] | select(.name == $n) | .flags | index("in-use")' >/dev/null
}

# wait_inuse IMG NAME SECS: until a writer has loaded the bitmap (in-use on disk)
wait_inuse() {
    local n=$(($3 * 10))
    while [ $n -gt 0 ]; do
        inuse_flag "$1" "$2" && return 0
        sleep 0.1
        n=$((n - 1))
    done
    fail "$1: bitmap $2 never got the in-use flag"
}

# qio_held IMG NAME: a qemu-io that writes, then sleeps with IMG open
# (BG_PID), once it has loaded bitmap NAME (in use on disk)
qio_held() {
    bg_start qio.out qio.err qemu-io -f qcow2 -c 'write -P 2 1M 64k' -c 'sleep 100000' "$1"
    wait_inuse "$1" "$2" 10
}

# is_inconsistent IMG NAME: after the writer died: blockctl --list (human
# and JSON) and qemu-img info say so; --dump, --clear, --enable, --merge
# and mirror --sync=bitmap refuse it saying why; --remove works and leaves
# a clean image
is_inconsistent() {
    local img=$1 name=$2 line
    inuse_flag "$img" "$name" || { fail "qemu-img info does not show $name in use"; return 1; }
    [ "$(bc_field "$img" "$name" .inconsistent)" = true ] ||
        { fail "--list --output=json does not say $name is inconsistent: $(bc_list "$img")"; return 1; }
    [ "$(bc_field "$img" "$name" '.count // "none"')" = none ] ||
        { fail "--list gives a count for inconsistent $name"; return 1; }
    run --separate-stderr "$PROG" bitmap --list "$img"
    [ "$status" -eq 0 ] || { fail "--list exited $status: $stderr"; return 1; }
    line=$(grep -E "^$name " <<<"$output")
    [[ $line == *inconsistent* ]] || { fail "--list does not show $name inconsistent: $output"; return 1; }

    run --separate-stderr timeout 30 "$PROG" bitmap --dump "$img" "$name"
    failed_cleanly || return 1
    [[ ${stderr_lines[0]} == *"$name"* && ${stderr_lines[0]} == *inconsistent* && ${stderr_lines[0]} == *"$img"* ]] ||
        { fail "--dump: the error does not say $img $name is inconsistent: $stderr"; return 1; }
    [ -z "$output" ] || { fail "--dump printed extents of an inconsistent bitmap: $output"; return 1; }

    run --separate-stderr timeout 30 "$PROG" mirror --sync=bitmap --bitmap "$name" -O qcow2 "$img" inc-refused.qcow2
    failed_cleanly || return 1
    [[ $stderr == *inconsistent* && $stderr == *"$name"* ]] ||
        { fail "mirror --sync=bitmap: the error does not say $name is inconsistent: $stderr"; return 1; }
    [ ! -e inc-refused.qcow2 ] && [ ! -e inc-refused.qcow2.part ] ||
        { fail "mirror --sync=bitmap left a target"; return 1; }

    local act before
    before=$(cksum <"$img")
    for act in --clear --enable --disable "--merge=$name"; do
        run --separate-stderr timeout 30 "$PROG" bitmap $act "$img" "$name"
        failed_cleanly || { fail "bitmap $act of an inconsistent bitmap"; return 1; }
        [[ $stderr == *inconsistent* ]] || { fail "bitmap $act: the error does not say why: $stderr"; return 1; }
    done
    [ "$(cksum <"$img")" = "$before" ] || { fail "a refused action changed $img"; return 1; }

    ok_bc bitmap --remove "$img" "$name" || return 1
    [ "$(qbitmap "$img" "$name")" = null ] || { fail "$name still listed by qemu-img info"; return 1; }
    qemu_clean "$img" || return 1
    # the name can be used again, for a consistent bitmap
    ok_bc bitmap --add "$img" "$name" || return 1
    [ "$(bc_field "$img" "$name" .inconsistent)" = false ] || { fail "a new $name is not consistent"; return 1; }
    [ "$(bc_ranges "$img" "$name")" = "[]" ] || { fail "a new $name is not empty"; return 1; }
}

SIZE=$((32 << 20))
M=$((1 << 20))
K=1024

# ------------------------------------------------------------------- tests

@test "--add: default granularity follows the cluster size as qemu-img's; name and flags as qemu-img info shows; check clean" {
    local cs
    for cs in 512 4096 16384 65536 2097152; do
        mkq "b$cs.qcow2" 8M "cluster_size=$cs"
        mkq "q$cs.qcow2" 8M "cluster_size=$cs"
        ok_bc bitmap --add "b$cs.qcow2" backup
        qimg bitmap --add "q$cs.qcow2" backup
        [ "$(qbitmaps "b$cs.qcow2")" = "$(qbitmaps "q$cs.qcow2")" ] ||
            fail "cluster_size=$cs: blockctl added $(qbitmaps "b$cs.qcow2"), qemu-img $(qbitmaps "q$cs.qcow2")"
        qemu_clean "b$cs.qcow2"
    done
    # the values themselves, not only the agreement
    bm_is b512.qcow2 backup 4096 '["auto"]'
    bm_is b16384.qcow2 backup 16384 '["auto"]'
    bm_is b65536.qcow2 backup 65536 '["auto"]'
    bm_is b2097152.qcow2 backup 65536 '["auto"]'
}

@test "--add -g and --disabled: qemu-img info shows the granularity and flags; qemu-img check clean; blockctl --list agrees" {
    mkq d.qcow2 16M
    cp d.qcow2 q.qcow2
    ok_bc bitmap --add -g 512 d.qcow2 g512
    ok_bc bitmap --add -g 4k d.qcow2 g4k
    ok_bc bitmap --add --granularity=1M d.qcow2 g1m
    ok_bc bitmap --add -g 64M --disabled d.qcow2 g64m-off
    ok_bc bitmap --add --disabled d.qcow2 off
    qimg bitmap --add -g 512 q.qcow2 g512
    qimg bitmap --add -g 4096 q.qcow2 g4k
    qimg bitmap --add -g 1048576 q.qcow2 g1m
    qimg bitmap --add -g 67108864 --disable q.qcow2 g64m-off
    qimg bitmap --add --disable q.qcow2 off
    [ "$(qbitmaps d.qcow2)" = "$(qbitmaps q.qcow2)" ] ||
        fail "blockctl: $(qbitmaps d.qcow2); qemu-img: $(qbitmaps q.qcow2)"
    bm_is d.qcow2 g512 512 '["auto"]'
    bm_is d.qcow2 g1m 1048576 '["auto"]'
    bm_is d.qcow2 g64m-off 67108864 '[]'
    bm_is d.qcow2 off 65536 '[]'
    qemu_clean d.qcow2
    qemu_check_equal d.qcow2
    # blockctl's own listing says the same, in directory order
    bc_list d.qcow2 >list.json
    [ "$(jq -c '[.[] | .name]' list.json)" = '["g512","g4k","g1m","g64m-off","off"]' ] ||
        fail "--list order: $(cat list.json)"
    [ "$(jq -c '[.[] | [.granularity, .recording, .inconsistent, .persistent, .count]]' list.json)" = \
        '[[512,true,false,true,0],[4096,true,false,true,0],[1048576,true,false,true,0],[67108864,false,false,true,0],[65536,false,false,true,0]]' ] ||
        fail "--list fields: $(cat list.json)"
    # a disabled bitmap added by blockctl stays empty under qemu-io's writes;
    # the enabled ones record them
    qio d.qcow2 'write -P 1 100k 8k'
    [ "$(bc_ranges d.qcow2 off)" = "[]" ] || fail "the disabled bitmap recorded a write"
    [ "$(bc_ranges d.qcow2 g64m-off)" = "[]" ] || fail "the disabled bitmap recorded a write"
    dump_agrees d.qcow2 g4k "$(want_ranges 4096 $((16 << 20)) $((100 * K)):$((8 * K)))"
    dump_agrees d.qcow2 g1m "[[0,$M]]"
}

@test "qemu-io's writes land in blockctl's bitmaps: --dump equals qemu-nbd -B + nbdinfo and the writes, at each granularity" {
    # a disk whose end is not a multiple of any granularity
    local size=$(((24 << 20) + 3584))
    qemu-img create -q -f qcow2 d.qcow2 "$size"
    ok_bc bitmap --add -g 512 d.qcow2 g512
    ok_bc bitmap --add -g 4k d.qcow2 g4k
    ok_bc bitmap --add d.qcow2 g64k
    ok_bc bitmap --add -g 1M d.qcow2 g1m
    ok_bc bitmap --add --disabled d.qcow2 off
    local w=("$((100 * K)):$((5 * K))" "$M:$((64 * K))" "$((3 * M + 512)):512"
        "$((5 * M - 1024)):$((2 * K))" "$((8 * M)):$((3 * M))" "$((20 * M + 7 * K)):$((130 * K))"
        "$((size - 1024)):1024")
    qio d.qcow2 "write -P 0x11 $((100 * K)) $((5 * K))" "write -P 0x12 $M $((64 * K))" \
        "write -P 0x13 $((3 * M + 512)) 512" "write -P 0x14 $((5 * M - 1024)) $((2 * K))" \
        "write -P 0x15 $((8 * M)) $((3 * M))" "write -z $((20 * M + 7 * K)) $((130 * K))" \
        "write -P 0x16 $((size - 1024)) 1024"
    qemu_clean d.qcow2
    local g n
    for g in 512 4096 65536 1048576; do
        case $g in 512) n=g512 ;; 4096) n=g4k ;; 65536) n=g64k ;; *) n=g1m ;; esac
        dump_agrees d.qcow2 $n "$(want_ranges $g "$size" "${w[@]}")"
    done
    [ "$(bc_ranges d.qcow2 off)" = "[]" ] || fail "disabled bitmap dirtied"
    dump_agrees d.qcow2 off "[]"
    # --list's count is the dirty bytes (capped at the disk's end)
    local ranges
    for n in g512 g4k g64k g1m; do
        ranges=$(nbd_ranges d.qcow2 $n)
        [ "$(bc_field d.qcow2 $n .count)" = "$(jq '[.[] | .[1] - .[0]] | add' <<<"$ranges")" ] ||
            fail "$n: --list count $(bc_field d.qcow2 $n .count) is not the dirty bytes of $ranges"
    done
    # the human --dump shows the same ranges, in hex
    run --separate-stderr "$PROG" bitmap --dump d.qcow2 g64k
    [ "$status" -eq 0 ] || fail "--dump exited $status"
    local human="" off len
    while read -r off len; do
        human+="[$((off)),$((off + len))],"
    done < <(sed 1d <<<"$output")
    [ "$(jq -c "$JQ_MERGE" <<<"[${human%,}]")" = "$(bc_ranges d.qcow2 g64k)" ] ||
        fail "human --dump differs from the JSON one: $output"
    # the image is still fine for QEMU, the bitmaps consistent
    qemu_clean d.qcow2
    [ "$(qemu-img info --output=json d.qcow2 | jq '[."format-specific".data.bitmaps[] | select(.flags | index("in-use"))] | length')" = 0 ] || fail "bitmaps left in use: $(qbitmaps d.qcow2)"
}

@test "a bitmap qemu-img adds and qemu-io dirties: blockctl --list and --dump show it as qemu-nbd does" {
    mkq d.qcow2 16M cluster_size=16384
    qimg bitmap --add d.qcow2 q16
    qimg bitmap --add -g 8192 --disable d.qcow2 qoff
    qimg bitmap --add -g 2097152 d.qcow2 q2m
    qio d.qcow2 'write -P 1 40k 20k' 'write -z 6M 100k' 'discard 0 16k' 'write -P 2 15M 1M'
    bc_list d.qcow2 >l.json
    [ "$(jq -c '[.[] | {name, granularity, recording, inconsistent}] | sort_by(.name)' l.json)" = \
        '[{"name":"q16","granularity":16384,"recording":true,"inconsistent":false},{"name":"q2m","granularity":2097152,"recording":true,"inconsistent":false},{"name":"qoff","granularity":8192,"recording":false,"inconsistent":false}]' ] ||
        fail "--list: $(cat l.json)"
    # flags as qemu-img info names them
    [ "$(jq -S -c '[.[] | {name, granularity, flags: (.flags | sort)}] | sort_by(.name)' l.json)" = "$(qbitmaps d.qcow2 | jq -S -c .)" ] ||
        fail "--list flags $(cat l.json) vs qemu-img info $(qbitmaps d.qcow2)"
    dump_agrees d.qcow2 q16 "$(want_ranges 16384 $((16 << 20)) $((40 * K)):$((20 * K)) $((6 * M)):$((100 * K)) 0:$((16 * K)) $((15 * M)):$M)"
    dump_agrees d.qcow2 q2m "$(want_ranges $((2 * M)) $((16 << 20)) $((40 * K)):$((20 * K)) $((6 * M)):$((100 * K)) $((15 * M)):$M)"
    dump_agrees d.qcow2 qoff "[]"
}

# act_both IMG ACTION-ARGS... -- NAME: the same qemu-img bitmap call on a
# copy of IMG (IMG.q) and blockctl's on IMG; then qemu-img info shows the
# same bitmaps, and every bitmap reads the same through qemu-nbd (and
# blockctl --dump)
act_both() {
    local img=$1 args=() b
    shift
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    cp "$img" "$img.q"
    qimg bitmap "${args[@]}" "$img.q" "$1" || return 1
    ok_bc bitmap "${args[@]}" "$img" "$1" || return 1
    [ "$(qbitmaps "$img")" = "$(qbitmaps "$img.q")" ] ||
        { fail "bitmap ${args[*]} $1: blockctl left $(qbitmaps "$img"), qemu-img $(qbitmaps "$img.q")"; return 1; }
    qemu_clean "$img" || return 1
    for b in $(qbitmaps "$img" | jq -r '.[].name'); do
        local ours theirs dump
        ours=$(nbd_ranges "$img" "$b") || return 1
        theirs=$(nbd_ranges "$img.q" "$b") || return 1
        dump=$(bc_ranges "$img" "$b") || return 1
        same_ranges "after ${args[*]} $1: bitmap $b, blockctl vs qemu-img" "$ours" "$theirs" || return 1
        same_ranges "after ${args[*]} $1: bitmap $b, blockctl --dump vs qemu-nbd -B" "$dump" "$ours" || return 1
    done
}

@test "--clear, --disable, --enable, --merge (same image, -b other image), --remove by blockctl: as qemu-img does them, seen by qemu-img info and qemu-nbd" {
    mkq d.qcow2 16M
    qimg bitmap --add d.qcow2 a
    qimg bitmap --add -g 4096 d.qcow2 f
    qimg bitmap --add -g 1048576 d.qcow2 c
    qio d.qcow2 'write -P 1 0 4k' 'write -P 2 3M 200k'
    qimg bitmap --disable d.qcow2 c
    qio d.qcow2 'write -P 3 9M 4k' 'write -P 4 12M 8k'
    mkq other.qcow2 16M
    qimg bitmap --add -g 512 other.qcow2 o
    qio other.qcow2 'write -P 5 7M 1k' 'write -P 6 15M 512'

    act_both d.qcow2 --merge f -- a          # finer into coarser
    act_both d.qcow2 --merge a -- c          # into a disabled one
    act_both d.qcow2 --merge c -- f          # coarser into finer
    act_both d.qcow2 --merge o -b other.qcow2 -F qcow2 -- a
    act_both d.qcow2 --merge o -b other.qcow2 -- f
    act_both d.qcow2 --disable -- a
    act_both d.qcow2 --enable -- c
    act_both d.qcow2 --clear -- f
    act_both d.qcow2 --remove -- a
    [ "$(qbitmap d.qcow2 a)" = null ] || fail "a was not removed"
    # what the flags mean to QEMU: c now records writes, f still does
    bm_is d.qcow2 c 1048576 '["auto"]'
    qio d.qcow2 'write -P 7 14M 4k'
    dump_agrees d.qcow2 f "$(want_ranges 4096 $((16 << 20)) $((14 * M)):4096)"
    [[ $(bc_ranges d.qcow2 c) == *"[$((14 * M)),$((15 * M))]"* ]] || fail "c did not record qemu-io's write"
    # a disabled one does not
    ok_bc bitmap --disable d.qcow2 f
    bm_is d.qcow2 f 4096 '[]'
    qio d.qcow2 'write -P 8 1M 4k'
    dump_agrees d.qcow2 f "$(want_ranges 4096 $((16 << 20)) $((14 * M)):4096)"
}

@test "qemu-img bitmap --clear/--disable/--enable/--merge/--remove: blockctl --list and --dump see the result" {
    mkq d.qcow2 16M
    ok_bc bitmap --add d.qcow2 a
    ok_bc bitmap --add -g 4k d.qcow2 f
    ok_bc bitmap --add -g 1M --disabled d.qcow2 c
    qio d.qcow2 'write -P 1 100k 4k' 'write -P 2 5M 300k'
    mkq other.qcow2 16M
    ok_bc bitmap --add -g 512 other.qcow2 o
    qio other.qcow2 'write -P 5 7M 1k'

    qimg bitmap --merge f d.qcow2 c
    dump_agrees d.qcow2 c "$(want_ranges $M $((16 << 20)) $((100 * K)):4096 $((5 * M)):$((300 * K)))"
    [ "$(bc_field d.qcow2 c .recording)" = false ] || fail "c is recording"
    qimg bitmap --merge o -b other.qcow2 -F qcow2 d.qcow2 a
    dump_agrees d.qcow2 a "$(want_ranges 65536 $((16 << 20)) $((100 * K)):4096 $((5 * M)):$((300 * K)) $((7 * M)):1024)"
    qimg bitmap --enable d.qcow2 c
    [ "$(bc_field d.qcow2 c .recording)" = true ] || fail "--list: c is not recording after qemu-img --enable"
    qimg bitmap --disable d.qcow2 a
    [ "$(bc_field d.qcow2 a .recording)" = false ] || fail "--list: a is recording after qemu-img --disable"
    [ "$(bc_field d.qcow2 a '.flags | length')" = 0 ] || fail "--list: a keeps a flag"
    qimg bitmap --clear d.qcow2 f
    [ "$(bc_ranges d.qcow2 f)" = "[]" ] || fail "f is not clear for blockctl"
    [ "$(bc_field d.qcow2 f .count)" = 0 ] || fail "f's count is not 0"
    qimg bitmap --remove d.qcow2 a
    [ "$(bc_list d.qcow2 | jq -c '[.[].name] | sort')" = '["c","f"]' ] || fail "--list after qemu-img --remove: $(bc_list d.qcow2)"
    run --separate-stderr "$PROG" bitmap --dump d.qcow2 a
    failed_cleanly
}

@test "several actions in one call apply in order: --add --disabled --merge, --merge --clear, --clear --merge, as qemu-img's sequence" {
    mkq d.qcow2 16M
    qimg bitmap --add d.qcow2 a
    qimg bitmap --add -g 4096 d.qcow2 f
    qio d.qcow2 'write -P 1 0 4k' 'write -P 2 3M 200k'
    qimg bitmap --clear d.qcow2 f
    qio d.qcow2 'write -P 3 9M 4k'
    act_both d.qcow2 --add -g 1048576 --disable --merge a -- snap
    bm_is d.qcow2 snap 1048576 '[]'
    [ "$(bc_ranges d.qcow2 snap)" = "[[0,$M],[$((3 * M)),$((4 * M))],[$((9 * M)),$((10 * M))]]" ] ||
        fail "snap: $(bc_ranges d.qcow2 snap)"
    act_both d.qcow2 --merge a --clear -- f
    [ "$(bc_ranges d.qcow2 f)" = "[]" ] || fail "--merge --clear left bits"
    act_both d.qcow2 --clear --merge snap -- f
    [ "$(bc_ranges d.qcow2 f)" = "[[0,$M],[$((3 * M)),$((4 * M))],[$((9 * M)),$((10 * M))]]" ] ||
        fail "--clear --merge: $(bc_ranges d.qcow2 f)"
    act_both d.qcow2 --remove --add -g 4096 -- a
    [ "$(bc_ranges d.qcow2 a)" = "[]" ] || fail "--remove --add: not a new bitmap"
}

@test "a batch whose last action fails changes nothing: qemu-img info and the file are as before" {
    mkq d.qcow2 16M
    ok_bc bitmap --add d.qcow2 a
    ok_bc bitmap --add -g 4k --disabled d.qcow2 f
    qio d.qcow2 'write -P 1 1M 4k'
    local info bytes dump_a
    info=$(qemu-img info --output=json d.qcow2)
    bytes=$(cksum <d.qcow2)
    dump_a=$(bc_ranges d.qcow2 a)
    local name args
    while read -r name args; do
        run --separate-stderr timeout 30 "$PROG" bitmap $args d.qcow2 "$name"
        failed_cleanly || fail "batch $args $name"
        [ "$status" -eq 1 ] || fail "batch $args $name exited $status"
        [ "${#stderr_lines[@]}" -eq 1 ] || fail "batch $args $name: ${#stderr_lines[@]} lines: $stderr"
        [ "$(qemu-img info --output=json d.qcow2 | jnorm)" = "$(jnorm <<<"$info")" ] ||
            fail "batch $args $name changed the bitmaps: $(qbitmaps d.qcow2)"
        [ "$(cksum <d.qcow2)" = "$bytes" ] || fail "batch $args $name wrote to the image"
    done <<'BATCHES'
new --add --remove --remove
new --add --merge=nosuch
new --add -g 4k --disabled --add
a --clear --disable --merge=nosuch
a --merge=f --enable --add
f --disable --remove --remove
f --enable --clear --merge=f --remove --merge=a
a --merge=f --merge=nosuch
a --merge=a --merge=o -b nosuchfile.qcow2
BATCHES
    [ "$(bc_ranges d.qcow2 a)" = "$dump_a" ] || fail "a's bits changed"
    qemu_clean d.qcow2
}

@test "errors: raw image, missing bitmap, duplicate name, name over 1023 bytes, different sizes: exit 1, one line naming the image or bitmap, nothing changed" {
    qemu-img create -q -f raw r.raw 8M
    local rawsum
    rawsum=$(cksum <r.raw)
    run --separate-stderr "$PROG" bitmap --add r.raw b
    failed_cleanly
    one_line_error r.raw
    run --separate-stderr "$PROG" bitmap --add -f raw r.raw b
    failed_cleanly
    one_line_error r.raw
    run --separate-stderr "$PROG" bitmap --list r.raw
    failed_cleanly
    one_line_error r.raw
    run --separate-stderr "$PROG" bitmap --dump r.raw b
    failed_cleanly
    one_line_error r.raw
    [ "$(fsize r.raw)" = $((8 << 20)) ] || fail "the raw image changed size"
    [ "$(cksum <r.raw)" = "$rawsum" ] || fail "something was written to the raw image"

    mkq d.qcow2 8M
    ok_bc bitmap --add d.qcow2 a
    local sum
    sum=$(cksum <d.qcow2)
    local act
    for act in --remove --clear --enable --disable "--merge=a" --dump; do
        run --separate-stderr "$PROG" bitmap $act d.qcow2 missing
        failed_cleanly
        [ "$status" -eq 1 ] || fail "$act missing exited $status"
        one_line_error missing
    done
    run --separate-stderr "$PROG" bitmap --merge=nosource d.qcow2 a
    failed_cleanly
    one_line_error nosource
    run --separate-stderr "$PROG" bitmap --add d.qcow2 a
    failed_cleanly
    [ "$status" -eq 1 ] || fail "duplicate --add exited $status"
    one_line_error "'a'"
    [ "$(cksum <d.qcow2)" = "$sum" ] || fail "a failed action changed the image"

    # names: 1023 bytes is fine (and qemu-img reads it), 1024 is not; empty is not
    local n1023 n1024
    n1023=$(printf 'n%.0s' $(seq 1023))
    n1024=${n1023}x
    ok_bc bitmap --add d.qcow2 "$n1023"
    [ "$(qbitmap d.qcow2 "$n1023" | jq -r .name)" = "$n1023" ] || fail "qemu-img does not see the 1023-byte name"
    qemu_clean d.qcow2
    sum=$(cksum <d.qcow2)
    run --separate-stderr "$PROG" bitmap --add d.qcow2 "$n1024"
    failed_cleanly
    [ "$status" -eq 1 ] || fail "1024-byte name exited $status"
    [ "${#stderr_lines[@]}" -eq 1 ] || fail "1024-byte name: ${#stderr_lines[@]} lines"
    [[ $stderr == *d.qcow2* || $stderr == *1023* ]] || fail "1024-byte name: $stderr"
    run --separate-stderr "$PROG" bitmap --add d.qcow2 ""
    [ "$status" -ne 0 ] && [ "$status" -lt 128 ] || fail "empty name exited $status"
    [ "$(cksum <d.qcow2)" = "$sum" ] || fail "a refused name changed the image"

    # merging from an image of another size (qemu-img refuses it too)
    mkq big.qcow2 16M
    qimg bitmap --add big.qcow2 x
    qio big.qcow2 'write -P 1 0 4k' 'write -P 1 12M 4k'
    mkq small.qcow2 4M
    qimg bitmap --add small.qcow2 y
    qio small.qcow2 'write -P 1 3M 4k'
    ! qemu-img bitmap --merge x -b big.qcow2 -F qcow2 d.qcow2 a 2>/dev/null || fail "qemu-img merged different sizes?"
    local src
    for src in "x big.qcow2" "y small.qcow2"; do
        sum=$(cksum <d.qcow2)
        run --separate-stderr "$PROG" bitmap --merge "${src% *}" -b "${src#* }" -F qcow2 d.qcow2 a
        failed_cleanly
        [ "$status" -eq 1 ] || fail "merge from ${src#* } exited $status"
        [ "${#stderr_lines[@]}" -eq 1 ] || fail "merge from ${src#* }: ${#stderr_lines[@]} lines: $stderr"
        [[ $stderr == *"${src% *}"* || $stderr == *"${src#* }"* || $stderr == *d.qcow2* ]] || fail "merge: $stderr"
        [ "$(cksum <d.qcow2)" = "$sum" ] || fail "a refused merge changed the image"
    done
    [ "$(bc_ranges d.qcow2 a)" = "[]" ] || fail "a got bits"
}

@test "bad granularity (and other usage errors) exit 64 and change nothing" {
    mkq d.qcow2 8M
    local sum g
    sum=$(cksum <d.qcow2)
    for g in 0 256 1000 3k 4G 8G abc -4096 65537; do
        run --separate-stderr "$PROG" bitmap --add -g "$g" d.qcow2 b
        [ "$status" -eq 64 ] || fail "-g $g exited $status (want 64): $stderr"
        [ -n "$stderr" ] || fail "-g $g: no message"
    done
    run --separate-stderr "$PROG" bitmap --list d.qcow2 extra
    [ "$status" -eq 64 ] || fail "--list with NAME exited $status"
    run --separate-stderr "$PROG" bitmap -U --add d.qcow2 b
    [ "$status" -eq 64 ] || fail "-U with an action exited $status"
    run --separate-stderr "$PROG" bitmap --list --dump d.qcow2 b
    [ "$status" -eq 64 ] || fail "--list --dump exited $status"
    run --separate-stderr "$PROG" bitmap d.qcow2 b
    [ "$status" -eq 64 ] || fail "no action exited $status"
    [ "$(cksum <d.qcow2)" = "$sum" ] || fail "a usage error changed the image"
    [ "$(qbitmaps d.qcow2)" = "[]" ]
}

@test "kill -9 of qemu-io holding the image read-write: the bitmaps are inconsistent, refused saying why, removable" {
    mkq d.qcow2 16M
    ok_bc bitmap --add d.qcow2 b
    ok_bc bitmap --add -g 4k --disabled d.qcow2 frozen
    qio d.qcow2 'write -P 1 0 64k'
    qio_held d.qcow2 b
    local pid=$BG_PID
    # while it runs, -U lists the bitmaps as in use (and --dump refuses them)
    run --separate-stderr "$PROG" bitmap -U --list --output=json d.qcow2
    [ "$status" -eq 0 ] || fail "-U --list exited $status: $stderr"
    [ "$(jq -r '.[] | select(.name == "b") | .inconsistent' <<<"$output")" = true ] || fail "-U --list: $output"
    run --separate-stderr "$PROG" bitmap --list d.qcow2
    failed_cleanly
    [[ $stderr == *lock* ]] || fail "--list without -U of a held image: $stderr"
    kill -KILL "$pid"
    bg_wait "$pid" 5
    is_inconsistent d.qcow2 b
    is_inconsistent d.qcow2 frozen
}

@test "kill -9 of qemu-io reading commands from a fifo: inconsistent, refused, removable" {
    mkq d.qcow2 16M
    ok_bc bitmap --add d.qcow2 b
    mkfifo cmds
    # (the fifo is opened by the child: a redirection of bg_start would block here)
    bg_start qio.out qio.err sh -c 'exec qemu-io -f qcow2 d.qcow2 <cmds'
    local pid=$BG_PID
    exec 7>cmds
    echo 'write -P 3 2M 4k' >&7
    wait_inuse d.qcow2 b 10
    kill -KILL "$pid"
    bg_wait "$pid" 5
    exec 7>&-
    is_inconsistent d.qcow2 b
}

@test "kill -9 of qemu-nbd serving the image read-write: inconsistent, refused, removable" {
    mkq d.qcow2 16M
    ok_bc bitmap --add d.qcow2 b
    nbd_serve rw -t -f qcow2 d.qcow2
    QIO_FMT=raw qio "$NBD_URI" 'write -P 4 3M 64k'
    wait_inuse d.qcow2 b 10
    server_stop "$NBD_PIDFILE" KILL
    is_inconsistent d.qcow2 b
}

@test "kill -9 of blockctl mirror -n writing into the image: inconsistent, refused, removable" {
    mkq src.qcow2 16M
    qio src.qcow2 'write -P 9 0 16M'
    mkq d.qcow2 16M
    ok_bc bitmap --add d.qcow2 b
    ok_bc bitmap --add -g 1M --disabled d.qcow2 off
    bg_start prog.json mirror.err "$PROG" mirror -n --bandwidth 1M --progress=json src.qcow2 d.qcow2
    local pid=$BG_PID
    wait_inuse d.qcow2 b 10
    sleep 1
    kill -0 "$pid" || fail "mirror ended before it was killed: $(cat mirror.err)"
    kill -KILL "$pid"
    bg_wait "$pid" 5
    is_inconsistent d.qcow2 b
    is_inconsistent d.qcow2 off
}

# written_ranges BEFORE.map AFTER.map BEFORE.raw AFTER.raw BLOCK: the
# START:LEN ranges (in BLOCK units) of an image that a command wrote, as
# far as can be seen from outside: the allocation qemu-img map shows
# changed (allocated, zero flag, host offset) or the contents changed
written_ranges() {
    python3 -S - "$@" <<'EOF'
import json, sys
bm, am, br, ar, blk = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
def states(f):
    st = {}
    for e in json.load(open(f)):
        for o in range(e["start"] // blk * blk, e["start"] + e["length"], blk):
            host = e["offset"] + (o - e["start"]) if "offset" in e else None
            st[o] = (e["depth"], e["present"], e["zero"], e["data"], host)
    return st
b, a = states(bm), states(am)
fb, fa = open(br, "rb"), open(ar, "rb")
out = []
for o in sorted(a):
    fb.seek(o); fa.seek(o)
    if a[o] != b.get(o) or fb.read(blk) != fa.read(blk):
        if out and out[-1][0] + out[-1][1] == o:
            out[-1][1] += blk
        else:
            out.append([o, blk])
for s, l in out:
    print("%d:%d" % (s, l))
EOF
}

@test "mirror -n into an image with bitmaps: enabled ones mark exactly the written clusters, disabled ones untouched" {
    mkq src.qcow2 16M
    qio src.qcow2 'write -P 1 0 64k' 'write -P 2 1M 200k' 'write -P 3 5M 3M' 'write -P 4 15M 4k' \
        'write -P 5 10M 64k'
    mkq d.qcow2 16M
    # the target had data where the source reads zeroes: mirror must write zeroes there
    qio d.qcow2 'write -P 0x77 12M 128k'
    ok_bc bitmap --add d.qcow2 g64
    ok_bc bitmap --add -g 1M d.qcow2 g1m
    ok_bc bitmap --add -g 4k d.qcow2 g4k
    ok_bc bitmap --add -g 64k --disabled d.qcow2 off
    ok_bc bitmap --add -g 64k d.qcow2 pre
    qio d.qcow2 'write -P 0x66 14M 4k'      # a bit in 'pre' and in every enabled one
    ok_bc bitmap --clear d.qcow2 g64
    ok_bc bitmap --clear d.qcow2 g1m
    ok_bc bitmap --clear d.qcow2 g4k
    ok_bc bitmap --disable d.qcow2 pre
    to_raw src.qcow2 src.raw
    to_raw d.qcow2 before.raw
    qemu-img map --output=json d.qcow2 >before.map
    ok_bc mirror -n src.qcow2 d.qcow2
    reads_as d.qcow2 src.raw
    qemu_clean d.qcow2
    qemu-img map --output=json d.qcow2 >after.map
    local w=()
    mapfile -t w < <(written_ranges before.map after.map before.raw src.raw 4096)
    # what mirror had to write at least: the source's data, and zeroes over
    # the target's old data
    local must
    must=$(want_ranges 4096 $((16 << 20)) 0:65536 "$M:$((200 * K))" "$((5 * M)):$((3 * M))" "$((15 * M)):4096" \
        "$((10 * M)):65536" "$((12 * M)):$((128 * K))" "$((14 * M)):4096")
    [ "$(jq -c --argjson w "$(want_ranges 4096 $((16 << 20)) "${w[@]}")" \
        '[.[] as $m | select(any($w[]; .[0] <= $m[0] and $m[1] <= .[1]) | not)]' <<<"$must")" = "[]" ] ||
        fail "the target's changes ${w[*]} do not cover what had to be written: $must"
    dump_agrees d.qcow2 g4k "$(want_ranges 4096 $((16 << 20)) "${w[@]}")"
    dump_agrees d.qcow2 g64 "$(want_ranges 65536 $((16 << 20)) "${w[@]}")"
    dump_agrees d.qcow2 g1m "$(want_ranges $M $((16 << 20)) "${w[@]}")"
    dump_agrees d.qcow2 off "[]"
    dump_agrees d.qcow2 pre "[[$((14 * M)),$((14 * M + 65536))]]"
    [ "$(qemu-img info --output=json d.qcow2 | jq '[."format-specific".data.bitmaps[] | select(.flags | index("in-use"))] | length')" = 0 ] ||
        fail "bitmaps left in use: $(qbitmaps d.qcow2)"
}

@test "commit into a base with bitmaps: the base's enabled bitmaps mark exactly the committed clusters; disabled ones untouched" {
    mkq base.qcow2 16M
    qio base.qcow2 'write -P 1 0 16M'
    ok_bc bitmap --add base.qcow2 g64
    ok_bc bitmap --add -g 4k base.qcow2 g4k
    ok_bc bitmap --add -g 2M base.qcow2 g2m
    ok_bc bitmap --add --disabled base.qcow2 off
    mkq top.qcow2 16M "cluster_size=4096,backing_file=base.qcow2,backing_fmt=qcow2"
    qio top.qcow2 'write -P 2 100k 8k' 'write -z 3M 64k' 'write -P 3 9M 1M' 'write -c -P 4 13M 4k' \
        'write -P 5 16380k 4k'
    ok_bc bitmap --add top.qcow2 topb
    to_raw top.qcow2 top.raw
    # the written ranges: what top holds itself
    qemu-img map --output=json top.qcow2 >top.map
    local w=()
    mapfile -t w < <(jq -r '.[] | select(.depth == 0 and .present) | "\(.start):\(.length)"' top.map)
    [ "${#w[@]}" -ge 4 ] || fail "unexpected map of top: $(cat top.map)"
    ok_bc commit top.qcow2
    reads_as base.qcow2 top.raw
    qemu_clean base.qcow2
    dump_agrees base.qcow2 g64 "$(want_ranges 65536 $((16 << 20)) "${w[@]}")"
    dump_agrees base.qcow2 g4k "$(want_ranges 4096 $((16 << 20)) "${w[@]}")"
    dump_agrees base.qcow2 g2m "$(want_ranges $((2 * M)) $((16 << 20)) "${w[@]}")"
    dump_agrees base.qcow2 off "[]"
    [ "$(qemu-img info --output=json base.qcow2 | jq '[."format-specific".data.bitmaps[] | select(.flags | index("in-use"))] | length')" = 0 ] ||
        fail "bitmaps left in use: $(qbitmaps base.qcow2)"
}

@test "stream into an image with bitmaps marks nothing in them" {
    mkq base.qcow2 16M
    qio base.qcow2 'write -P 1 0 8M' 'write -P 2 12M 2M'
    mkq top.qcow2 16M "backing_file=base.qcow2,backing_fmt=qcow2"
    ok_bc bitmap --add top.qcow2 b
    ok_bc bitmap --add -g 4k top.qcow2 f
    ok_bc bitmap --add --disabled top.qcow2 off
    qio top.qcow2 'write -P 3 1M 4k'
    ok_bc bitmap --add base.qcow2 bb
    local before_b before_f
    before_b=$(bc_ranges top.qcow2 b)
    before_f=$(bc_ranges top.qcow2 f)
    [ "$before_b" = "[[$M,$((M + 65536))]]" ] || fail "setup: $before_b"
    to_raw top.qcow2 top.raw
    ok_bc stream top.qcow2
    reads_as top.qcow2 top.raw
    backing_is top.qcow2 '' ''
    qemu_clean top.qcow2
    dump_agrees top.qcow2 b "$before_b"
    dump_agrees top.qcow2 f "$before_f"
    dump_agrees top.qcow2 off "[]"
    dump_agrees base.qcow2 bb "[]"
    [ "$(qemu-img info --output=json top.qcow2 | jq '[."format-specific".data.bitmaps[] | select(.flags | index("in-use"))] | length')" = 0 ] ||
        fail "bitmaps left in use: $(qbitmaps top.qcow2)"
}

# ------------------------------------------------------------ --salvage

# salvaged IMG NAME GRAN SIZE FLAGS_JSON: NAME is consistent again, as
# qemu-img info (no in-use flag; FLAGS_JSON) and qemu-img check see it,
# and every bit is set: qemu-nbd -B exports the whole disk as dirty, and
# blockctl --list / --dump say so too
salvaged() {
    local img=$1 name=$2 gran=$3 size=$4
    bm_is "$img" "$name" "$gran" "$5" || return 1
    qemu_clean "$img" || return 1
    same_ranges "$img $name: qemu-nbd -B after --salvage" "$(nbd_ranges "$img" "$name")" "[[0,$size]]" || return 1
    same_ranges "$img $name: --dump after --salvage" "$(bc_ranges "$img" "$name")" "[[0,$size]]" || return 1
    [ "$(bc_field "$img" "$name" .inconsistent)" = false ] || { fail "--list: $name still inconsistent"; return 1; }
    [ "$(bc_field "$img" "$name" .count)" = "$size" ] || { fail "--list: $name count $(bc_field "$img" "$name" .count), want $size"; return 1; }
}

@test "--salvage after kill -9 of qemu-io: in-use flag gone (qemu-img info), check clean, every bit set (qemu-nbd -B); the other bitmap untouched; it records again" {
    local size=$(((16 << 20) + 7680))
    mkq d.qcow2 "$size"
    ok_bc bitmap --add d.qcow2 b
    ok_bc bitmap --add -g 4k --disabled d.qcow2 frozen
    qio d.qcow2 'write -P 1 0 64k'
    qio_held d.qcow2 b
    kill -KILL "$BG_PID"
    bg_wait "$BG_PID" 5
    inuse_flag d.qcow2 b && inuse_flag d.qcow2 frozen || fail "the kill left no bitmap in use: $(qbitmaps d.qcow2)"
    ok_bc bitmap --salvage d.qcow2 b
    salvaged d.qcow2 b 65536 "$size" '["auto"]'
    # only b: frozen is still in use, and refused
    inuse_flag d.qcow2 frozen || fail "--salvage b changed frozen: $(qbitmaps d.qcow2)"
    [ "$(bc_field d.qcow2 frozen .inconsistent)" = true ] || fail "frozen is no longer inconsistent"
    ok_bc bitmap --salvage d.qcow2 frozen
    # disabled it was, disabled it stays
    salvaged d.qcow2 frozen 4096 "$size" '[]'
    # b is a working bitmap again: cleared, it records qemu-io's writes
    ok_bc bitmap --clear d.qcow2 b
    qio d.qcow2 'write -P 3 5M 4k'
    dump_agrees d.qcow2 b "$(want_ranges 65536 "$size" $((5 * M)):4096)"
    same_ranges "frozen records nothing" "$(nbd_ranges d.qcow2 frozen)" "[[0,$size]]"
    qemu_clean d.qcow2
}

@test "--salvage after kill -9 of blockctl agent (offline, then through a restarted agent): consistent, all set, incremental copies work on" {
    mkq d.qcow2 8M
    ok_bc bitmap --add d.qcow2 backup
    local q nbd
    q=$(sock_path q) nbd=$(sock_path n)
    echo "$BATS_TEST_TMPDIR/agent.pid" >>"$BATS_TEST_TMPDIR/.servers"
    "$PROG" agent --qmp "$q" --nbd "unix:$nbd" --state agent.state --disk "vda=$PWD/d.qcow2" \
        --daemonize --pidfile "$BATS_TEST_TMPDIR/agent.pid" 3>&- 2>/dev/null || fail "the agent did not start"
    QIO_FMT=raw qio "nbd+unix:///vda?socket=$nbd" 'write -P 5 2M 64k'
    server_stop "$BATS_TEST_TMPDIR/agent.pid" KILL
    inuse_flag d.qcow2 backup || fail "kill -9 of the agent left no bitmap in use: $(qbitmaps d.qcow2)"
    cp d.qcow2 d2.qcow2
    # offline
    ok_bc bitmap --salvage d.qcow2 backup
    salvaged d.qcow2 backup 65536 $((8 * M)) '["auto"]'
    # an incremental copy by it takes everything, and reads as the disk
    mkq full.qcow2 8M
    to_raw d.qcow2 d.raw
    ok_bc mirror --sync=bitmap --bitmap backup --clear-bitmap -B full.qcow2 -F qcow2 -O qcow2 d.qcow2 inc.qcow2
    reads_as inc.qcow2 d.raw
    [ "$(bc_ranges d.qcow2 backup)" = "[]" ] || fail "not cleared after the copy"
    # live: a restarted agent sees it inconsistent; --salvage --agent fixes it
    "$PROG" agent --qmp "$q" --nbd "unix:$nbd" --disk "vda=$PWD/d2.qcow2" \
        --daemonize --pidfile "$BATS_TEST_TMPDIR/agent.pid" 3>&- 2>/dev/null || fail "the agent did not restart"
    run --separate-stderr "$PROG" bitmap --agent "$q" --list --output=json vda
    [ "$(jq -r '.[0].inconsistent' <<<"$output")" = true ] || fail "restarted agent: $output"
    run --separate-stderr "$PROG" bitmap --agent "$q" --salvage --clear vda backup
    [ "$status" -eq 64 ] || fail "--agent --salvage --clear exited $status"
    ok_bc bitmap --agent "$q" --salvage vda backup
    run --separate-stderr "$PROG" bitmap --agent "$q" --list --output=json vda
    [ "$(jq -c '.[0] | [.inconsistent, .recording, .count]' <<<"$output")" = "[false,true,$((8 * M))]" ] ||
        fail "after --agent --salvage: $output"
    ok_bc bitmap --agent "$q" --clear vda backup
    QIO_FMT=raw qio "nbd+unix:///vda?socket=$nbd" 'write -P 6 3M 4k'
    run --separate-stderr "$PROG" bitmap --agent "$q" --dump --output=json vda backup
    [ "$(jq -c '[.[] | [.start, .length]]' <<<"$output")" = "[[$((3 * M)),65536]]" ] || fail "records: $output"
    server_stop "$BATS_TEST_TMPDIR/agent.pid"
    bm_is d2.qcow2 backup 65536 '["auto"]'
    qemu_clean d2.qcow2
    dump_agrees d2.qcow2 backup "[[$((3 * M)),$((3 * M + 65536))]]"
}

@test "--salvage of an in-use flag set by editing the directory; of a consistent bitmap; with --clear after it; errors and faults change nothing" {
    mkq d.qcow2 4M
    ok_bc bitmap --add d.qcow2 b
    ok_bc bitmap --add -g 1M d.qcow2 c
    qio d.qcow2 'write -P 1 64k 4k'
    # the first entry's flags (offset 12 in the directory entry): | in-use
    local dir flags
    dir=$(qedit d.qcow2 bmdir | cut -d ' ' -f 3)
    flags=$(qedit d.qcow2 u32 $((dir + 12)))
    qedit d.qcow2 u32 $((dir + 12)) $((flags | 1))
    inuse_flag d.qcow2 b || fail "the edit did not set in-use: $(qbitmaps d.qcow2)"
    [ "$(bc_field d.qcow2 b .inconsistent)" = true ] || fail "not inconsistent after the edit"
    # errors: nothing changes
    local sum
    sum=$(cksum <d.qcow2)
    run --separate-stderr "$PROG" bitmap --salvage d.qcow2 nosuch
    failed_cleanly
    one_line_error nosuch
    run --separate-stderr env BLOCKCTL_FAULT='pwrite:*:eio:d.qcow2' "$PROG" bitmap --salvage d.qcow2 b
    failed_cleanly
    inuse_flag d.qcow2 b || fail "a failed --salvage cleared in-use"
    qemu-img check d.qcow2 >/dev/null || [ $? -eq 3 ] || fail "a failed --salvage left $(qemu-img check d.qcow2)"
    run --separate-stderr "$PROG" check -r leaks d.qcow2
    [ "$status" -eq 0 ] || fail "check -r leaks exited $status: $stderr"
    run --separate-stderr "$PROG" bitmap --salvage d.qcow2
    [ "$status" -eq 64 ] || fail "no NAME exited $status"
    run --separate-stderr "$PROG" bitmap --salvage -U d.qcow2 b
    [ "$status" -eq 64 ] || fail "-U exited $status"
    to_raw d.qcow2 r.raw
    qemu-img create -q -f raw r2.raw 4M
    run --separate-stderr "$PROG" bitmap --salvage r2.raw b
    failed_cleanly
    # --salvage then --clear, in one call: consistent and empty
    ok_bc bitmap --salvage --clear d.qcow2 b
    bm_is d.qcow2 b 65536 '["auto"]'
    dump_agrees d.qcow2 b "[]"
    qemu_clean d.qcow2
    # a consistent bitmap: every bit set
    ok_bc bitmap --salvage d.qcow2 c
    salvaged d.qcow2 c $M $((4 * M)) '["auto"]'
    # the data never changed
    to_raw d.qcow2 r3.raw
    cmp r.raw r3.raw
}
