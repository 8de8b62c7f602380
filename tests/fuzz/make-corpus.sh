#!/bin/bash
# Make the seed corpus of the fuzz harnesses: small qcow2 images written by
# qemu-img and qemu-io in every variant blockctl reads, plus a few crafted
# damaged ones (for check and repair).
#   tests/fuzz/make-corpus.sh OUTDIR
# Every seed is at most MAX_SEED bytes (default 1 MiB, the fuzzer's
# -max_len); larger images are truncated (which still exercises the
# "table past end of file" paths).  Nothing here is committed: scripts/fuzz.sh
# regenerates the corpus into build-fuzz/.
# SPDX-License-Identifier: GPL-2.0-or-later
set -eu

out=${1:?usage: $0 OUTDIR}
MAX_SEED=${MAX_SEED:-1048576}
for t in qemu-img qemu-io; do
    command -v $t >/dev/null || { echo "make-corpus: $t is missing (scripts/deps.sh test)" >&2; exit 1; }
done
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/blockctl-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT
ulimit -c 0
n=0

qio() { qemu-io -f qcow2 "$@" >/dev/null 2>&1; }

# Keep image $1 as seed NAME $2 (truncated to MAX_SEED).
keep() {
    local f=$1 name=$2
    cp "$f" "$out/$name.qcow2"
    if [ "$(stat -c %s "$out/$name.qcow2")" -gt "$MAX_SEED" ]; then
        truncate -s "$MAX_SEED" "$out/$name.qcow2"
    fi
    n=$((n + 1))
}

# Write $4 bytes of $3 (hex) at byte offset $2 of file $1.
poke() {
    printf "$(printf '%s' "$3" | sed 's/../\\x&/g')" |
        dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
# Big-endian u64 at offset $2 of file $1.
peek64() { od -An -tx1 -j "$2" -N8 "$1" | tr -d ' \n'; }

# A few writes of varied patterns and kinds over a small disk of size $2.
fill() {
    local f=$1 cs=$2
    qio -c "write -P 0x11 0 $cs" \
        -c "write -P 0x22 $((cs * 3 + cs / 2)) $cs" \
        -c "write -z $((cs * 6)) $((cs * 2))" \
        -c "write -P 0x33 $((cs * 9)) $((cs * 3))" \
        -c "discard $((cs * 10)) $cs" \
        -c "write -P 0x44 $((cs * 14 + 512)) 512" "$f"
}

# ---- cluster sizes, v3 and v2 ----
for cs in 512 4096 65536; do
    for compat in 1.1 0.10; do
        f=$work/c$cs-$compat.qcow2
        qemu-img create -q -f qcow2 -o cluster_size=$cs,compat=$compat "$f" 1M
        fill "$f" $cs
        keep "$f" "cs${cs}-v${compat}"
    done
done
# 2 MiB clusters: metadata alone is bigger than a seed; keep the header
# part (the tables end up past EOF) and an empty one.
f=$work/c2m.qcow2
qemu-img create -q -f qcow2 -o cluster_size=2M "$f" 4M
keep "$f" "cs2M-empty"
qio -c "write -P 0x55 0 4096" "$f"
keep "$f" "cs2M-data-truncated"
# one empty image per size, and a bigger virtual size with a sparse write
for cs in 512 4096 65536; do
    f=$work/e$cs.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=$cs "$f" 1M
    keep "$f" "empty-cs$cs"
done
f=$work/big.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 "$f" 64G
qio -c "write -P 0x66 1G 4096" -c "write -P 0x67 63G 4096" "$f"
keep "$f" "sparse-64G"
# a fully written disk at 512 B clusters: several refcount blocks
f=$work/full.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 "$f" 256K
qio -c "write -P 0x77 0 256K" "$f"
keep "$f" "full-cs512"

# ---- extended L2 (subclusters) ----
for cs in 16384 32768; do
    f=$work/x$cs.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=$cs,extended_l2=on "$f" 1M
    qio -c "write -P 0x12 $((cs / 32)) $((cs / 32))" \
        -c "write -P 0x13 $((cs * 2 + cs / 2)) $((cs / 16))" \
        -c "write -z $((cs * 4 + cs / 4)) $((cs / 8))" \
        -c "write -P 0x14 $((cs * 6)) $cs" \
        -c "discard $((cs * 6 + cs / 2)) $((cs / 4))" "$f"
    keep "$f" "extl2-cs$cs"
done

# ---- compression ----
for ct in zlib zstd; do
    for cs in 4096 65536; do
        f=$work/z$ct$cs.qcow2
        qemu-img create -q -f qcow2 -o cluster_size=$cs,compression_type=$ct "$f" 1M
        qio -c "write -c -P 0x21 0 $cs" -c "write -c -P 0x23 $((cs * 2)) $((cs * 2))" \
            -c "write -P 0x24 $((cs * 5)) $cs" "$f"
        keep "$f" "compressed-$ct-cs$cs"
    done
    f=$work/zx$ct.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=16384,extended_l2=on,compression_type=$ct "$f" 1M
    qio -c "write -c -P 0x25 0 16384" -c "write -P 0x26 20480 1024" "$f"
    keep "$f" "compressed-$ct-extl2"
done
# compressed data that does not compress well (random bytes)
f=$work/zrand.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 "$f" 64K
head -c 16384 /dev/urandom >"$work/rand.raw"
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096 "$work/rand.raw" "$f"
keep "$f" "compressed-random"

# ---- refcount widths ----
for rb in 1 2 4 8 32 64; do
    f=$work/r$rb.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=4096,refcount_bits=$rb "$f" 1M
    fill "$f" 4096
    keep "$f" "refcount-bits$rb"
done

# ---- internal snapshots ----
for compat in 1.1 0.10; do
    f=$work/s$compat.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=4096,compat=$compat "$f" 1M
    qio -c "write -P 0x31 0 16K" "$f"
    qemu-img snapshot -c snap1 "$f"
    qio -c "write -P 0x32 4K 8K" "$f"
    qemu-img snapshot -c snap2 "$f"
    qio -c "write -P 0x34 64K 4K" "$f"
    keep "$f" "snapshots-v$compat"
done

# ---- persistent bitmaps ----
f=$work/b.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 "$f" 1M
qemu-img bitmap --add "$f" bm0
qemu-img bitmap --add -g 65536 "$f" bm1
qemu-img bitmap --add --disable "$f" bm-disabled
qio -c "write -P 0x41 0 8K" -c "write -P 0x42 512K 4K" "$f"
keep "$f" "bitmaps"
f=$work/b512.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 "$f" 1M
qemu-img bitmap --add -g 512 "$f" fine
qio -c "write -P 0x43 0 64K" -c "write -P 0x44 700K 32K" "$f"
keep "$f" "bitmaps-cs512"

# ---- backing files ----
qemu-img create -q -f qcow2 -o cluster_size=4096 "$work/base.qcow2" 1M
f=$work/ov.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 "$f" 1M
qio -c "write -P 0x51 4K 4K" -c "write -z 16K 4K" "$f"
keep "$f" "backing-qcow2"
f=$work/ovraw.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 -b /nonexistent/base.raw -F raw -u "$f" 1M
qio -c "write -P 0x52 1K 1K" "$f" || true
keep "$f" "backing-raw-name"
f=$work/ovv2.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096,compat=0.10 -b base.qcow2 -F qcow2 "$f" 1M
keep "$f" "backing-v2"
f=$work/ovext.qcow2
qemu-img create -q -f qcow2 -o cluster_size=16384,extended_l2=on -b base.qcow2 -F qcow2 "$f" 1M
qio -c "write -P 0x53 2K 1K" "$f"
keep "$f" "backing-extl2"

# ---- lazy refcounts, dirty bit ----
f=$work/lazy.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096,lazy_refcounts=on "$f" 1M
qio -c "write -P 0x61 0 8K" "$f"
keep "$f" "lazy-clean"
( qio -c "write -P 0x62 64K 12K" -c "abort" "$f" ) 2>/dev/null || true
keep "$f" "lazy-dirty"

# ---- preallocation ----
f=$work/pm.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096,preallocation=metadata "$f" 256K
keep "$f" "prealloc-metadata"

# ---- raw ----
head -c 65536 /dev/zero >"$out/raw-zero.raw"
printf 'QFI\xfb' >"$out/short-magic.bin"
n=$((n + 2))

# ---- crafted damage (for check/repair) ----
# base for edits: 4k clusters, refcount table at 0x10000? read it from the header
f=$work/d.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4096 "$f" 1M
fill "$f" 4096
rt=$((16#$(peek64 "$f" 48)))       # refcount_table_offset
rb=$((16#$(peek64 "$f" "$rt")))    # first refcount block
l1=$((16#$(peek64 "$f" 40)))       # l1_table_offset
cp "$f" "$work/d1.qcow2"; poke "$work/d1.qcow2" $((rb + 2 * 4)) 0000   # refcount 0 of a used cluster
keep "$work/d1.qcow2" "damaged-refcount-zero"
cp "$f" "$work/d2.qcow2"; poke "$work/d2.qcow2" $((rb + 2 * 200)) 0001 # leak
keep "$work/d2.qcow2" "damaged-leak"
cp "$f" "$work/d3.qcow2"; poke "$work/d3.qcow2" $l1 0000000000000000    # L2 table dropped: leaks
keep "$work/d3.qcow2" "damaged-l1-dropped"
l2=$((16#$(peek64 "$f" "$l1") & 16#00fffffffffffe00))
cp "$f" "$work/d4.qcow2"; poke "$work/d4.qcow2" $l2 80000000ffff0000   # L2 entry past EOF
keep "$work/d4.qcow2" "damaged-l2-past-eof"
cp "$f" "$work/d5.qcow2"; poke "$work/d5.qcow2" $((l2 + 8)) "$(peek64 "$f" "$l2")" # two refs, COPIED set
keep "$work/d5.qcow2" "damaged-double-ref"
cp "$f" "$work/d6.qcow2"; poke "$work/d6.qcow2" $((rt + 8)) 00000000000ff000 # refcount block past EOF
keep "$work/d6.qcow2" "damaged-reftable"
cp "$f" "$work/d7.qcow2"; poke "$work/d7.qcow2" 79 02                   # corrupt bit
keep "$work/d7.qcow2" "corrupt-bit"
cp "$f" "$work/d8.qcow2"; poke "$work/d8.qcow2" $l2 4000000000001000   # compressed descriptor (bogus)
keep "$work/d8.qcow2" "damaged-compressed-desc"
cp "$f" "$work/d9.qcow2"; poke "$work/d9.qcow2" 72 0000000000000010   # unknown incompatible bit
keep "$work/d9.qcow2" "unknown-incompat"

echo "make-corpus: $n seeds in $out ($(du -sk "$out" | cut -f1) KiB)"
