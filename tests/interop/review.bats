#!/usr/bin/env bats
# Cases found by reviewing blockctl against qemu-img 7.2 and the man pages:
# each is checked against what QEMU does (or the page promises), not
# against blockctl's own output.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
}

teardown() {
    copy_teardown
}

# ------------------------------------------------------------------ create

@test "create: a backing file with preallocation needs extended_l2, as in qemu-img" {
    qemu-img create -q -f qcow2 base.qcow2 4M
    qemu-io -c 'write -P 7 0 1M' base.qcow2 >/dev/null
    for p in metadata falloc full; do
        run -1 --separate-stderr "$PROG" create -q -f qcow2 -b base.qcow2 -F qcow2 \
            -o preallocation=$p o-$p.qcow2
        [[ $stderr == *o-$p.qcow2*extended_l2* ]] || fail "stderr: $stderr"
        [ ! -e o-$p.qcow2 ] || fail "o-$p.qcow2 was left behind"
        run -1 qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 -o preallocation=$p q-$p.qcow2
    done
}

@test "create: extended_l2 preallocation leaves subclusters unallocated (the backing shows through)" {
    qemu-img create -q -f qcow2 base.qcow2 4M
    qemu-io -c 'write -P 7 0 1M' -c 'write -P 9 3M 64k' base.qcow2 >/dev/null
    for p in metadata falloc full; do
        "$PROG" create -q -f qcow2 -b base.qcow2 -F qcow2 \
            -o extended_l2=on,preallocation=$p o-$p.qcow2
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 \
            -o extended_l2=on,preallocation=$p q-$p.qcow2
        qemu_same o-$p.qcow2 base.qcow2
        qemu_clean o-$p.qcow2
        qemu_map_equal o-$p.qcow2
        diff <(qemu-img map --output=json o-$p.qcow2) <(qemu-img map --output=json q-$p.qcow2) ||
            fail "qemu-img map differs from qemu-img's own image ($p)"
        # and without a backing file
        "$PROG" create -q -f qcow2 -o extended_l2=on,preallocation=$p n-$p.qcow2 1M
        qemu-img create -q -f qcow2 -o extended_l2=on,preallocation=$p m-$p.qcow2 1M
        diff <(qemu-img map --output=json n-$p.qcow2) <(qemu-img map --output=json m-$p.qcow2) ||
            fail "map of a preallocated extended_l2 image differs ($p)"
    done
    # guest writes into a preallocated cluster land in it
    qemu-io -c 'write -P 5 64k 4k' o-metadata.qcow2 >/dev/null
    qemu-img convert -O raw o-metadata.qcow2 want.raw
    qemu-io -f raw -c 'read -P 5 64k 4k' -c 'read -P 7 68k 60k' want.raw | grep -q '^read' ||
        fail "guest data wrong after a write into a preallocated cluster"
    qemu_clean o-metadata.qcow2
}

@test "create: backing_fmt without a backing file is refused, as in qemu-img" {
    run -1 --separate-stderr "$PROG" create -f qcow2 -o backing_fmt=qcow2 x.qcow2 1M
    [[ $stderr == *x.qcow2* ]] || fail "stderr: $stderr"
    [ ! -e x.qcow2 ]
    run -1 qemu-img create -f qcow2 -o backing_fmt=qcow2 y.qcow2 1M
}

@test "create: an -o value of the wrong type fails before 'Formatting', naming the file" {
    for o in lazy_refcounts=maybe extended_l2=foo refcount_bits=x cluster_size=64KiB; do
        # (an invalid option value is a usage error: 64; qemu-img says 1)
        run -64 --separate-stderr "$PROG" create -f qcow2 -o "$o" x.qcow2 1M
        [ -z "$output" ] || fail "-o $o printed on stdout: $output"
        [[ $stderr == *x.qcow2* ]] || fail "-o $o: $stderr"
        [ ! -e x.qcow2 ]
        run -1 qemu-img create -f qcow2 -o "$o" y.qcow2 1M
        [ -z "$output" ] || [[ $output != *Formatting* ]] || fail "qemu-img printed Formatting"
    done
    run -64 "$PROG" create -f qcow2 -o "" x.qcow2 1M
    [ ! -e x.qcow2 ]
}

# -------------------------------------------------------------------- check

@test "check: a refcount set for a cluster past the end of the file is not a leak, as in qemu-img" {
    qemu-img create -q -f qcow2 l.qcow2 64M
    qemu-io -c 'write 0 64k' l.qcow2 >/dev/null
    local n=$(( $(fsize l.qcow2) / 65536 ))
    python3 - l.qcow2 "$n" <<'EOF'
import struct, sys
f = open(sys.argv[1], 'r+b'); h = f.read(64)
rt = struct.unpack('>Q', h[48:56])[0]; f.seek(rt); rb = struct.unpack('>Q', f.read(8))[0]
f.seek(rb + 2 * int(sys.argv[2])); f.write(struct.pack('>H', 1))
EOF
    qemu_check_equal l.qcow2
    run -0 "$PROG" check l.qcow2
}

@test "check -r leaks clears the corrupt bit of an image that has no corruption, as qemu-img" {
    qemu-img create -q -f qcow2 a.qcow2 64M
    qemu-io -c 'write -P 3 0 64k' a.qcow2 >/dev/null
    python3 -c "import struct; f=open('a.qcow2','r+b'); f.seek(72); f.write(struct.pack('>Q', 2))"
    cp a.qcow2 q.qcow2
    run -0 qemu-img check -r leaks q.qcow2
    run -0 "$PROG" check -r leaks a.qcow2
    cmp a.qcow2 q.qcow2 || fail "the images differ after check -r leaks"
    [ "$(qemu-img info --output=json a.qcow2 | jq '.["format-specific"].data.corrupt')" = false ]
}

@test "check: truncated images agree with qemu-img (human, JSON, -r all)" {
    qemu-img create -q -f qcow2 full.qcow2 64M
    qemu-io -c 'write -P 3 0 1M' full.qcow2 >/dev/null
    for n in 262144 300000 400000 500000; do
        head -c $n full.qcow2 >t.qcow2
        qemu_check_equal t.qcow2
        head -c $n full.qcow2 >t.qcow2
        cp t.qcow2 q.qcow2
        run qemu-img check -r all q.qcow2
        local qrc=$status
        run "$PROG" check -r all t.qcow2
        [ "$status" -eq "$qrc" ] || fail "-r all at $n: blockctl $status, qemu-img $qrc"
    done
}

@test "check -r all: a misaligned zero-flagged L2 entry is repaired, image clean after" {
    qemu-img create -q -f qcow2 a.qcow2 64M
    qemu-io -c 'write -P 1 0 256k' a.qcow2 >/dev/null
    # L2 entry 1: the zero flag and a host offset 512 bytes into a cluster
    python3 - a.qcow2 <<'EOF'
import struct, sys
f = open(sys.argv[1], 'r+b'); h = f.read(64)
l1 = struct.unpack('>Q', h[40:48])[0]; f.seek(l1)
l2 = struct.unpack('>Q', f.read(8))[0] & ((1 << 56) - 1) & ~0x1ff
f.seek(l2 + 8); e = struct.unpack('>Q', f.read(8))[0] & ((1 << 56) - 1)
f.seek(l2 + 8); f.write(struct.pack('>Q', (e + 0x200) | 1))
EOF
    cp a.qcow2 q.qcow2
    qemu_check_equal a.qcow2
    run qemu-img check -r all q.qcow2
    local qrc=$status
    run "$PROG" check -r all a.qcow2
    [ "$status" -eq "$qrc" ] || fail "blockctl -r all exited $status, qemu-img $qrc: $output"
    qemu_clean a.qcow2
    qemu_same a.qcow2 q.qcow2
}

# ---------------------------------------------------------------- map, info

@test "map --output=json of an empty range is one zero-length extent, as in qemu-img" {
    qemu-img create -q -f qcow2 z.qcow2 0
    truncate -s 0 z.raw
    qemu-img create -q -f qcow2 m.qcow2 1M
    qemu_map_equal z.qcow2
    qemu_map_equal -f raw z.raw
    qemu_map_equal --start-offset=1M m.qcow2
    qemu_map_equal --start-offset=2M m.qcow2
    qemu_map_equal --max-length=0 m.qcow2
}

@test "info --output=json escapes non-ASCII and invalid UTF-8 names as qemu-img does" {
    local f
    f=$(printf 'e\xe2\x82\xacz\xf0\x9f\x98\x80x\xffy\x7f.raw')
    qemu-img create -q -f raw "$f" 1M
    qemu_info_equal "$f"
    diff <("$PROG" info --output=json "$f" | grep filename) \
        <(qemu-img info --output=json "$f" | grep filename) || fail "filename escaped differently"
}

# ------------------------------------------------------------ mirror, snapshot

@test "mirror -o help and snapshot -o help list the options and create nothing" {
    qemu-img create -q -f qcow2 s.qcow2 1M
    run -0 "$PROG" mirror -O qcow2 -o help s.qcow2 t.qcow2
    [[ $output == *cluster_size* ]] || fail "$output"
    run -0 "$PROG" snapshot -o help s.qcow2 o.qcow2
    [[ $output == *cluster_size* ]] || fail "$output"
    [ ! -e t.qcow2 ] && [ ! -e t.qcow2.part ] && [ ! -e o.qcow2 ]
}

@test "mirror -n --sync=none copies nothing and succeeds; the target is unchanged" {
    qemu-img create -q -f qcow2 s.qcow2 1M
    qemu-io -c 'write -P 1 0 64k' s.qcow2 >/dev/null
    qemu-img create -q -f qcow2 t.qcow2 1M
    local before
    before=$(sha256sum <t.qcow2)
    run -0 --separate-stderr "$PROG" mirror -n --sync=none --progress=json s.qcow2 t.qcow2
    [ "$(jq -s 'last | .done == .total' <<<"$output")" = true ] || fail "progress: $output"
    [ "$(sha256sum <t.qcow2)" = "$before" ] || fail "the target changed"
}

@test "snapshot: an overlay whose creation fails part-way is removed with the others" {
    qemu-img create -q -f qcow2 a.qcow2 1M
    qemu-img create -q -f qcow2 big.qcow2 100T
    # the 100T overlay's L1 table is larger than the file-size limit
    run --separate-stderr bash -c 'ulimit -f 600; exec "$@"' x \
        "$PROG" snapshot a.qcow2 a1.qcow2 big.qcow2 big1.qcow2
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    [[ $stderr == *big1.qcow2* ]] || fail "stderr: $stderr"
    [ ! -e a1.qcow2 ] || fail "a1.qcow2 left behind"
    [ ! -e big1.qcow2 ] || fail "big1.qcow2 left behind"
}

# -------------------------------------------------------------------- NBD

@test "an NBD export as backing file is recorded and listed as raw (stream --base, mirror --shallow, snapshot -l)" {
    requires_cmd qemu-nbd
    qemu-img create -q -f qcow2 base.qcow2 4M
    qemu-io -c 'write -P 1 0 1M' base.qcow2 >/dev/null
    nbd_serve b --persistent --shared=8 -f qcow2 base.qcow2
    local U=$NBD_URI
    qemu-img create -q -f qcow2 -b "$U" -F raw mid.qcow2
    qemu-io -c 'write -P 2 1M 1M' mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    qemu-io -c 'write -P 3 2M 64k' top.qcow2 >/dev/null
    qemu-img convert -O raw top.qcow2 want.raw
    cp top.qcow2 t2.qcow2
    cp mid.qcow2 m2.qcow2
    qemu-img rebase -u -b m2.qcow2 -F qcow2 t2.qcow2

    run -0 "$PROG" stream --base "$U" top.qcow2
    [ "$(qemu-img info --output=json top.qcow2 | jq -r '.["backing-filename-format"]')" = raw ]
    [ "$(qemu-img info --output=json top.qcow2 | jq -r '.["backing-filename"]')" = "$U" ]
    qemu_same -F raw top.qcow2 want.raw
    run -0 "$PROG" mirror --shallow top.qcow2 sh.qcow2
    [ "$(qemu-img info --output=json sh.qcow2 | jq -r '.["backing-filename-format"]')" = raw ]
    run -0 "$PROG" mirror -O raw sh.qcow2 sh.raw
    cmp sh.raw want.raw

    # snapshot -l lists the export as raw, as info does
    run -0 --separate-stderr "$PROG" snapshot -l --output=json t2.qcow2
    [ "$(jq -r '.[-1].format' <<<"$output")" = raw ] || fail "snapshot -l: $output"
}

@test "NBD: a second connection to a one-client qemu-nbd is avoided or times out, never hangs" {
    requires_cmd qemu-nbd
    qemu-img create -q -f qcow2 base.qcow2 4M
    qemu-io -c 'write -P 1 0 1M' base.qcow2 >/dev/null
    nbd_serve one --persistent -r -f qcow2 base.qcow2   # --shared=1, qemu-nbd's default
    run -0 timeout -k 5 60 "$PROG" mirror --sync=none -O qcow2 "$NBD_URI" none.qcow2
    [ "$(qemu-img info --output=json none.qcow2 | jq -r '.["backing-filename"]')" = "$NBD_URI" ]
    # the same export twice in one command: an error naming the URI, in time
    run --separate-stderr env BLOCKCTL_NBD_TIMEOUT=1 timeout -k 5 30 "$PROG" compare "$NBD_URI" "$NBD_URI"
    [ "$status" -eq 2 ] || fail "compare exited $status: $stderr"
    [[ $stderr == *"$NBD_URI"*"did not answer"* ]] || fail "stderr: $stderr"
    # SIGTERM stops the wait at once, with mirror's status for it (the
    # target's backing file is the export: a second connection; mirroring
    # the export onto itself is refused before it connects twice)
    "$PROG" mirror -n "$NBD_URI" none.qcow2 2>err.txt &
    local pid=$! rc=0
    sleep 1
    kill -TERM $pid
    timeout 10 tail --pid=$pid -f /dev/null || { kill -9 $pid; fail "SIGTERM did not stop it"; }
    wait $pid || rc=$?
    [ "$rc" -eq 143 ] || fail "exit $rc: $(cat err.txt)"
    grep -q "interrupted" err.txt || fail "stderr: $(cat err.txt)"
}

@test "mirror -U copies a disk qemu-nbd holds (as qemu-img convert -U); without -U it is refused" {
    requires_cmd qemu-nbd
    qemu-img create -q -f qcow2 s.qcow2 1M
    qemu-io -c 'write -P 1 0 64k' s.qcow2 >/dev/null
    nbd_serve held -f qcow2 s.qcow2
    run -1 --separate-stderr "$PROG" mirror s.qcow2 t.qcow2
    [[ $stderr == *s.qcow2* ]] || fail "stderr: $stderr"
    [ ! -e t.qcow2 ]
    run -0 "$PROG" mirror -U s.qcow2 t.qcow2
    qemu_same -U s.qcow2 t.qcow2
    run -64 "$PROG" mirror -U --sync=bitmap --bitmap=b --clear-bitmap s.qcow2 u.qcow2
}

# ------------------------------------------- chains with short images, growth

# short_chain: base (2M of data) <- mid (1M, shorter) <- top (2M); the guest
# reads zeroes in 1M..2M (past mid's end), which no operation may change
short_chain() {
    qemu-img create -q -f qcow2 base.qcow2 2M
    qemu-io -c 'write -P 1 0 2M' base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 1M
    qemu-io -c 'write -P 2 0 64k' mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 2M
    qemu-io -c 'write -P 3 64k 64k' top.qcow2 >/dev/null
    qemu-img convert -O raw top.qcow2 before.raw
}

@test "stream --base and commit keep the zeroes past the end of a shorter image in between" {
    local args
    for args in "commit --top mid.qcow2" "commit --base base.qcow2" "commit -d --base base.qcow2" \
        "stream --base base.qcow2" "stream"; do
        rm -f ./*.qcow2 before.raw
        short_chain
        run -0 "$PROG" $args top.qcow2
        qemu_same top.qcow2 before.raw || fail "$args changed the guest view"
        qemu_clean top.qcow2
        qemu_clean base.qcow2
    done
}

@test "commit into a smaller base with a longer backing file: the grown part reads zero, as qemu-img" {
    qemu-img create -q -f raw r.raw 2M
    qemu-io -f raw -c 'write -P 7 0 2M' r.raw >/dev/null
    qemu-img create -q -f qcow2 -b r.raw -F raw base.qcow2 1M
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 2M
    qemu-io -c 'write -P 5 64k 4k' top.qcow2 >/dev/null
    qemu-img convert -O raw top.qcow2 before.raw
    run -0 "$PROG" commit top.qcow2
    qemu_same top.qcow2 before.raw
    qemu_same base.qcow2 before.raw
    qemu_clean base.qcow2
}

@test "commit refuses to grow a compat=0.10 base with internal snapshots, as qemu-img; base unchanged" {
    qemu-img create -q -f qcow2 -o compat=0.10 base.qcow2 1M
    qemu-img snapshot -c s0 base.qcow2
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 2M
    qemu-io -c 'write -P 1 1536k 4k' top.qcow2 >/dev/null
    local before
    before=$(sha256sum <base.qcow2)
    run -1 --separate-stderr "$PROG" commit top.qcow2
    [[ $stderr == *base.qcow2* ]] || fail "stderr: $stderr"
    [ "$(sha256sum <base.qcow2)" = "$before" ] || fail "base changed"
    qemu-img snapshot -l base.qcow2 | grep -q s0
}

@test "commit grows a base that holds bitmaps: they follow, as qemu-img commit does" {
    qemu-img create -q -f qcow2 b.qcow2 1M
    qemu-img bitmap --add b.qcow2 bm
    qemu-io -c 'write -P 2 0 64k' b.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2 2M
    qemu-io -c 'write -P 5 1536k 64k' t.qcow2 >/dev/null
    cp b.qcow2 qb.qcow2
    cp t.qcow2 qt.qcow2
    qemu-img rebase -u -b qb.qcow2 -F qcow2 qt.qcow2
    qemu-img commit -q qt.qcow2
    run -0 "$PROG" commit t.qcow2
    qemu_clean b.qcow2
    qemu_same b.qcow2 qb.qcow2
    [ "$(qemu-img info --output=json b.qcow2 | jq -c '.["format-specific"].data.bitmaps')" = \
      "$(qemu-img info --output=json qb.qcow2 | jq -c '.["format-specific"].data.bitmaps')" ]
    [ "$(bitmap_extents b.qcow2 bm)" = "$(bitmap_extents qb.qcow2 bm)" ] ||
        fail "bitmap differs: $(bitmap_extents b.qcow2 bm) vs $(bitmap_extents qb.qcow2 bm)"
}

# bitmap_extents IMG NAME: the dirty extents as qemu-nbd exports them
bitmap_extents() {
    requires_cmd qemu-nbd nbdinfo
    local sock
    sock=$(sock_path "bx$RANDOM")
    qemu-nbd --fork -r -f qcow2 -B "$2" -k "$sock" "$1" 3>&- || return 1
    nbdinfo --map="qemu:dirty-bitmap:$2" "nbd+unix:///?socket=$sock" | awk '$3 == 1 { print $1, $2 }'
}

@test "stream without --base stores no zeroes the new view does not need (compat=0.10 too)" {
    qemu-img create -q -f raw base.raw 1M
    qemu-img create -q -f qcow2 -o compat=0.10 -b base.raw -F raw top.qcow2 1M
    run -0 "$PROG" stream top.qcow2
    [ "$(qemu-img map --output=json top.qcow2 | jq '[.[] | select(.data)] | length')" -eq 0 ] ||
        fail "data stored: $(qemu-img map --output=json top.qcow2)"
}

# ------------------------------------------------- repairs that share clusters

# point IMG's L2 entry 1 (or, with "l1", L1 entry 0) at the refcount block
# (or table): a cluster both metadata and guest data
share_metadata() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); h = f.read(72)
l1 = struct.unpack('>Q', h[40:48])[0]; rt = struct.unpack('>Q', h[48:56])[0]
f.seek(rt); rb = struct.unpack('>Q', f.read(8))[0]
f.seek(l1); l2 = struct.unpack('>Q', f.read(8))[0] & ((1 << 56) - 1) & ~0x1ff
if sys.argv[2] == 'l1':
    f.seek(l1); f.write(struct.pack('>Q', rt | (1 << 63)))
else:
    f.seek(l2 + 8); f.write(struct.pack('>Q', rb | (1 << 63)))
PY
}

@test "check -r all: a cluster both refcount metadata and guest data keeps the guest data, as qemu-img" {
    local how
    for how in l2 l1; do
        rm -f m.qcow2 b.qcow2 q.qcow2
        qemu-img create -q -f qcow2 -o compat=0.10 m.qcow2 8M
        qemu-io -c 'write -P 1 0 128k' m.qcow2 >/dev/null
        share_metadata m.qcow2 $how
        cp m.qcow2 b.qcow2
        cp m.qcow2 q.qcow2
        run qemu-img check -r all q.qcow2
        local qrc=$status
        run "$PROG" check -r all b.qcow2
        [ "$status" -eq "$qrc" ] || fail "$how: blockctl exited $status, qemu-img $qrc"
        qemu_clean b.qcow2
        qemu_same b.qcow2 q.qcow2 || fail "$how: the repair changed guest data"
    done
}

@test "check: a refcount block that is also a bitmap table is a corruption; -r all leaves qemu-img clean" {
    qemu-img create -q -f qcow2 m.qcow2 8M
    qemu-img bitmap --add m.qcow2 bm
    qemu-io -c 'write -P 1 0 128k' m.qcow2 >/dev/null
    # reftable entry 1 -> the bitmap's table (read from the directory)
    python3 - m.qcow2 <<'PY'
import struct, sys
f = open(sys.argv[1], 'r+b'); d = f.read(1 << 20)
hl = struct.unpack('>I', d[100:104])[0]; p = hl
rt = struct.unpack('>Q', d[48:56])[0]
while True:
    t, n = struct.unpack('>II', d[p:p + 8])
    if t == 0: raise SystemExit('no bitmaps extension')
    if t == 0x23852875:
        dirofs = struct.unpack('>Q', d[p + 24:p + 32])[0]; break
    p += 8 + ((n + 7) & ~7)
tbl = struct.unpack('>Q', d[dirofs:dirofs + 8])[0]
f.seek(rt + 8); f.write(struct.pack('>Q', tbl))
PY
    cp m.qcow2 q.qcow2
    run qemu-img check q.qcow2
    local qrc=$status
    run "$PROG" check m.qcow2
    [ "$status" -eq "$qrc" ] || fail "check: blockctl exited $status, qemu-img $qrc: $output"
    run "$PROG" check -r all m.qcow2
    qemu_clean m.qcow2
}

@test "compare -s over a backing file shorter than the overlay names qemu-img's offset" {
    qemu-img create -q -f qcow2 s.qcow2 64k
    qemu-img create -q -f qcow2 -b s.qcow2 -F qcow2 a.qcow2 1M
    qemu-img create -q -f qcow2 c.qcow2 1M
    local pair q b
    for pair in "a.qcow2 c.qcow2" "c.qcow2 a.qcow2" "a.qcow2 s.qcow2"; do
        run qemu-img compare -s $pair
        q="$status:$output"
        run "$PROG" compare -s $pair
        b="$status:$output"
        [ "$q" = "$b" ] || fail "compare -s $pair: qemu-img '$q', blockctl '$b'"
    done
}

@test "a backing file that cannot be opened: the one-line error names the overlay" {
    qemu-img create -q -f qcow2 -u -b / -F raw x.qcow2 1M
    local cmd
    for cmd in "check" "map" "info --backing-chain"; do
        run --separate-stderr "$PROG" $cmd x.qcow2
        [ "$status" -eq 1 ] || fail "$cmd exited $status"
        [[ $stderr == *x.qcow2* ]] || fail "$cmd: $stderr"
        [ "$(wc -l <<<"$stderr")" -eq 1 ] || fail "$cmd: $stderr"
    done
}
