#!/usr/bin/env bats
# blockctl resize against qemu-img resize 7.2 as the oracle: the same
# resizes of copies of the same images give the same sizes, contents
# (qemu-img compare), clean qemu-img check and the same persistent
# bitmaps; the same messages and exit statuses; and resize --agent
# (block_resize) on blockctl's agent and on qemu-storage-daemon.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
load ../agent-helpers
bats_require_minimum_version 1.5.0

vsize() {
    qemu-img info -U --output=json "$@" | jq -r '."virtual-size"'
}

# img NAME FMT [CLUSTER]: 4M with data at 0, 1M+64k and 3M+4k, zeroes at 2M
img() {
    if [ "$2" = raw ]; then
        truncate -s 4M "$1"
        QIO_FMT=raw qio "$1" 'write -P 1 0 64k' 'write -P 2 1088k 64k' 'write -P 3 3076k 4k'
    else
        mkq "$1" 4M "cluster_size=${3:-65536}"
        qio "$1" 'write -P 1 0 64k' 'write -P 2 1088k 64k' 'write -P 3 3076k 4k' \
            'write -z 2M 64k'
    fi
}

# same FMT ARGS...: resize b.FMT with blockctl and q.FMT with qemu-img;
# both succeed, print "Image resized.", and agree on size and contents
same() {
    local fmt=$1
    shift
    run -0 --separate-stderr "$PROG" resize -f "$fmt" "${@:1:$#-1}" "b.$fmt" "${@: -1}"
    [ "$output" = "Image resized." ] || fail "output: $output"
    run -0 qemu-img resize -f "$fmt" "${@:1:$#-1}" "q.$fmt" "${@: -1}"
    [ "$(vsize "b.$fmt")" = "$(vsize "q.$fmt")" ] ||
        fail "sizes: blockctl $(vsize "b.$fmt"), qemu-img $(vsize "q.$fmt")"
    qemu_same -f "$fmt" -F "$fmt" "b.$fmt" "q.$fmt" || fail "contents differ"
    check_ok "b.$fmt"
}

@test "grow with absolute, suffixed and relative sizes: as qemu-img (qcow2 512..2M clusters, raw)" {
    local cs
    for cs in 512 65536 2M; do
        rm -f b.qcow2 q.qcow2
        img b.qcow2 qcow2 "$cs"
        cp b.qcow2 q.qcow2
        same qcow2 8M
        same qcow2 +1.5M
        same qcow2 10485760
        same qcow2 0x1000000
    done
    img b.raw raw
    cp b.raw q.raw
    same raw +100k
    same raw 9000000
    [ "$(stat -c %s b.raw)" = 9000000 ]
}

@test "shrink without --shrink: qemu-img's refusal, exit 1, the image unchanged" {
    img b.qcow2 qcow2
    img b.raw raw
    local f s
    for f in b.qcow2 b.raw; do
        s=$(cksum <"$f")
        run -1 --separate-stderr "$PROG" resize "$f" 2M
        [[ $stderr == *"Use the --shrink option to perform a shrink operation."* ]] || fail "$stderr"
        [[ $stderr == *"warning: Shrinking an image will delete all data beyond the shrunken image's end."* ]]
        run -1 --separate-stderr "$PROG" resize "$f" -1M
        [ "$(cksum <"$f")" = "$s" ]
        run -1 --separate-stderr qemu-img resize "$f" -1M
        [[ $stderr == *"Use the --shrink option to perform a shrink operation."* ]]
    done
}

@test "--shrink: raw and qcow2 (data past the end discarded) as qemu-img; growing again reads zeroes" {
    local cs
    img b.raw raw
    cp b.raw q.raw
    same raw --shrink 1100k
    same raw --shrink -- -36k
    for cs in 512 65536 2M; do
        rm -f b.qcow2 q.qcow2
        img b.qcow2 qcow2 "$cs"
        [ "$cs" = 2M ] || qio b.qcow2 "write -c -P 4 2M $cs"
        cp b.qcow2 q.qcow2
        same qcow2 --shrink 1100k
        [ "$(vsize b.qcow2)" = $((1100 * 1024)) ]
        # the clusters past the end were dropped, as qemu-img drops them
        [ "$(qemu-img check --output=json b.qcow2 | jq '."allocated-clusters"')" = \
          "$(qemu-img check --output=json q.qcow2 | jq '."allocated-clusters"')" ] ||
            fail "$cs: allocated clusters differ"
        "$PROG" resize -q b.qcow2 4M
        qemu-img convert -O raw b.qcow2 grown.raw
        qemu-img convert -O raw q.qcow2 q.raw
        cmp -n $((1100 * 1024)) grown.raw q.raw ||
            fail "$cs: the kept part changed"
        [ "$(tail -c +$((1100 * 1024 + 1)) grown.raw | tr -d '\0' | wc -c)" = 0 ] ||
            fail "$cs: old data shows past the old end"
        check_ok b.qcow2
    done
}

@test "--shrink of a qcow2 cuts the file after its last cluster in use, as qemu-img" {
    local opts
    # (64k clusters, plain, version 2, preallocated: qemu-img ends the file
    # where the data it keeps ends)
    for opts in "" compat=0.10 preallocation=full lazy_refcounts=on; do
        rm -f b.qcow2 q.qcow2
        qemu-img create -q -f qcow2 ${opts:+-o "$opts"} b.qcow2 8M
        qio b.qcow2 'write -P 5 0 8M'
        cp b.qcow2 q.qcow2
        same qcow2 --shrink 3M
        [ "$(stat -c %s b.qcow2)" = "$(stat -c %s q.qcow2)" ] ||
            fail "$opts: file of $(stat -c %s b.qcow2) bytes, qemu-img's $(stat -c %s q.qcow2)"
        [ "$(stat -c %s b.qcow2)" -lt $((4 << 20)) ] || fail "$opts: the file was not cut"
        # and it grows again from there
        "$PROG" resize -q b.qcow2 8M
        qio b.qcow2 'write -P 6 7M 1M'
        check_ok b.qcow2
    done
}

@test "sizes qemu-img refuses: not a multiple of 512 (qcow2), zero, negative, malformed" {
    img b.qcow2 qcow2
    run -1 --separate-stderr "$PROG" resize --shrink b.qcow2 1000
    [ "$stderr" = "blockctl: The new size must be a multiple of 512" ] || fail "$stderr"
    run -1 --separate-stderr "$PROG" resize b.qcow2 5000001
    [[ $stderr == *"The new size must be a multiple of 512"* ]] || fail "$stderr"
    run -1 qemu-img resize b.qcow2 5000001
    [[ $output == *"The new size must be a multiple of 512"* ]]
    run -1 --separate-stderr "$PROG" resize b.qcow2 0
    [ "$stderr" = "blockctl: New image size must be positive" ] || fail "$stderr"
    run -1 --separate-stderr "$PROG" resize --shrink b.qcow2 -100M
    [ "$stderr" = "blockctl: New image size must be positive" ] || fail "$stderr"
    run -1 qemu-img resize --shrink b.qcow2 -100M
    run -64 --separate-stderr "$PROG" resize b.qcow2 10x
    [[ $stderr == *"Parameter 'size' expects a non-negative number below 2^64"* ]] || fail "$stderr"
    [ "$(vsize b.qcow2)" = 4194304 ]
    check_ok b.qcow2
}

@test "--preallocation: qcow2 metadata/falloc/full and raw falloc/full as qemu-img; refusals" {
    local m
    for m in metadata falloc full; do
        rm -f b.qcow2 q.qcow2
        img b.qcow2 qcow2
        cp b.qcow2 q.qcow2
        same qcow2 --preallocation=$m 8M
        # the grown area is allocated as qemu-img allocates it
        [ "$(qemu-img map --output=json b.qcow2 | jq -c '[.[] | select(.start >= 4194304) | .data]')" = \
          "$(qemu-img map --output=json q.qcow2 | jq -c '[.[] | select(.start >= 4194304) | .data]')" ] ||
            fail "$m: maps differ"
    done
    [ "$(info_field b.qcow2 '."actual-size"')" -ge 4194304 ] || fail "full: not written"
    for m in falloc full; do
        rm -f b.raw q.raw
        img b.raw raw
        cp b.raw q.raw
        same raw --preallocation=$m 6M
        [ "$(du -k b.raw | cut -f1)" -ge 2048 ] || fail "$m: $(du -k b.raw)"
    done
    run -1 --separate-stderr "$PROG" resize -f raw --preallocation=metadata b.raw 8M
    [[ $stderr == *"Unsupported preallocation mode: metadata"* ]] || fail "$stderr"
    run -1 qemu-img resize -f raw --preallocation=metadata b.raw 8M
    run -1 --separate-stderr "$PROG" resize --preallocation=full b.qcow2 8M
    [[ $stderr == *"Preallocation can only be used for growing images"* ]] || fail "$stderr"
    run -64 --separate-stderr "$PROG" resize --preallocation=foo b.qcow2 9M
    [[ $stderr == *"Invalid preallocation mode 'foo'"* ]] || fail "$stderr"
    [ "$(vsize b.raw)" = 6291456 ]
}

@test "persistent bitmaps follow a grow and a shrink as QEMU resizes them" {
    img b.qcow2 qcow2
    qemu-img bitmap --add -g 64k b.qcow2 bm
    qemu-img bitmap --add -g 4k --disable b.qcow2 off
    qio b.qcow2 'write -P 5 0 128k' 'write -P 6 3M 1M'
    qemu-img bitmap --enable b.qcow2 off
    qio b.qcow2 'write -P 7 3968k 64k'
    cp b.qcow2 q.qcow2
    same qcow2 +4M
    same qcow2 --shrink 3584k
    same qcow2 5M
    local n
    for n in bm off; do
        [ "$("$PROG" bitmap --dump b.qcow2 "$n")" = "$("$PROG" bitmap --dump q.qcow2 "$n")" ] ||
            fail "$n: $("$PROG" bitmap --dump b.qcow2 "$n") vs $("$PROG" bitmap --dump q.qcow2 "$n")"
    done
    [ -n "$("$PROG" bitmap --dump b.qcow2 bm)" ]
    [ "$(info_field b.qcow2 '."format-specific".data.bitmaps')" = \
      "$(info_field q.qcow2 '."format-specific".data.bitmaps')" ]
    # qemu-img reads them back and writes on through them
    qemu-img bitmap --clear b.qcow2 bm
    qemu_clean b.qcow2
}

@test "a backing file longer than the overlay does not show through the grown area" {
    mkq base.qcow2 8M
    qio base.qcow2 'write -P 9 0 8M'
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 b.qcow2 2M
    cp b.qcow2 q.qcow2
    same qcow2 6M
    qemu-img convert -O raw b.qcow2 b.raw
    [ "$(tail -c +$((2 * 1048576 + 1)) b.raw | tr -d '\0' | wc -c)" = 0 ] || fail "backing data shows"
}

@test "a locked image is refused" {
    img b.qcow2 qcow2
    qemu-io -f qcow2 b.qcow2 -c 'sleep 20000' &
    local pid=$!
    sleep 0.5
    run -1 --separate-stderr "$PROG" resize b.qcow2 8M
    kill "$pid"
    wait "$pid" || true
    [[ $stderr == *'Failed to get "write" lock'* ]] || fail "$stderr"
    [ "$(vsize b.qcow2)" = 4194304 ]
}

@test "[blockctl] resize --agent: block_resize of a running disk, grow and shrink" {
    mkq vm/vda.qcow2 32M
    qio vm/vda.qcow2 'write -P 1 0 4M' 'write -P 2 30M 1M'
    qemu-img bitmap --add vm/vda.qcow2 bm
    daemon_up blockctl "vda=$PWD/vm/vda.qcow2"
    run -0 --separate-stderr "$PROG" resize --agent "$QMP" vda +32M
    [ "$output" = "Image resized." ] || fail "$output $stderr"
    [ "$("$PROG" info --agent "$QMP" --output=json vda | jq '."virtual-size"')" = 67108864 ]
    run -1 --separate-stderr "$PROG" resize --agent "$QMP" vda 16M
    [[ $stderr == *"Use the --shrink option"* ]] || fail "$stderr"
    run -0 --separate-stderr "$PROG" resize --agent "$QMP" --shrink vda 16M
    run -64 --separate-stderr "$PROG" resize --agent "$QMP" --preallocation=full vda 20M
    # a new client sees the new size
    [ "$(qemu-img info --output=json "$(disk_uri vda)" | jq '."virtual-size"')" = 16777216 ]
    daemon_down
    [ "$(vsize vm/vda.qcow2)" = 16777216 ]
    check_ok vm/vda.qcow2
    qemu-img convert -O raw vm/vda.qcow2 vda.raw
    cmp -n 4194304 vda.raw <(head -c 4194304 /dev/zero | tr '\0' '\1') || fail "data lost"
    [ "$(info_field vm/vda.qcow2 '."format-specific".data.bitmaps[0].name')" = bm ]
}

@test "[qsd] resize --agent: block_resize of a node; an exported node is QSD's refusal" {
    requires_qsd
    mkq vm/vda.qcow2 32M
    mkq vm/extra.qcow2 32M
    qio vm/extra.qcow2 'write -P 1 0 4M'
    daemon_up qsd "vda=$PWD/vm/vda.qcow2"
    qmp_ok '{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"extra","file":{"driver":"file","filename":"'"$PWD"'/vm/extra.qcow2"}}}' >/dev/null
    run -0 --separate-stderr "$PROG" resize --agent "$QMP" extra +32M
    [ "$output" = "Image resized." ] || fail "$output $stderr"
    run -0 --separate-stderr "$PROG" resize --agent "$QMP" --shrink extra -48M
    # QSD's NBD export does not share the resize permission
    run -1 --separate-stderr "$PROG" resize --agent "$QMP" vda 64M
    [[ $stderr == *"Permission conflict"* ]] || fail "$stderr"
    daemon_down
    [ "$(vsize vm/extra.qcow2)" = 16777216 ]
    check_ok vm/extra.qcow2
}

@test "block_resize: QEMU 7.2's errors on both servers" {
    mkq vm/vda.qcow2 32M
    cat >script <<'EOF'
{"execute":"block_resize","arguments":{"node-name":"nope","size":1024}}	{"error":"Cannot find device='' nor node-name='nope'"}
{"execute":"block_resize","arguments":{"size":1024}}	{"error":"Cannot find device='' nor node-name=''"}
{"execute":"block_resize","arguments":{"device":"x","node-name":"y","size":1024}}	{"error":"Cannot find device='x' nor node-name='y'"}
{"execute":"block_resize","arguments":{"node-name":"extra","size":-1}}	{"error":"Parameter 'size' expects a >0 size"}
{"execute":"block_resize","arguments":{"node-name":"extra","size":"1"}}	{"error":"Invalid parameter type for 'size', expected: integer"}
{"execute":"block_resize","arguments":{"node-name":"extra"}}	{"error":"Parameter 'size' is missing"}
{"execute":"block_resize","arguments":{"node-name":"extra","size":1000}}	{"error":"The new size must be a multiple of 512"}
{"execute":"block_resize","arguments":{"node-name":"extra","size":67108864}}	{"return":{}}
EOF
    local f
    for f in blockctl qsd; do
        [ "$f" = qsd ] && ! command -v qemu-storage-daemon >/dev/null && continue
        rm -f vm/extra.qcow2
        mkq vm/extra.qcow2 32M
        daemon_up "$f" "vda=$PWD/vm/vda.qcow2"
        qmp_ok '{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"extra","file":{"driver":"file","filename":"'"$PWD"'/vm/extra.qcow2"}}}' >/dev/null
        qmp_script script
        daemon_down
        [ "$(vsize vm/extra.qcow2)" = 67108864 ] || fail "$f: $(vsize vm/extra.qcow2)"
    done
}
