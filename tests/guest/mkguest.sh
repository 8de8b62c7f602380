#!/bin/bash
# mkguest.sh OUTDIR: the guest of tests/interop/guest.bats, built from the
# Debian packages of `scripts/deps.sh guest` into OUTDIR (a cache under
# build/, rebuilt when an input changes):
#   OUTDIR/vmlinuz         the newest kernel in /boot (or $GUEST_KERNEL)
#   OUTDIR/initramfs.gz    busybox (static), the virtio modules of that
#                          kernel, tests/guest/recwriter.c built with
#                          gcc -static, and an init that runs it: kernel
#                          argument mode=write (the records, on /dev/vda;
#                          max=N, rate=N records a second as recwriter takes)
#                          or mode=verify, then powers the guest off
# Prints nothing on success; exits 1 with a one-line reason otherwise.
# SPDX-License-Identifier: GPL-2.0-or-later
set -eu
out=$1
here=$(cd "$(dirname "$0")" && pwd)
CC=${CC:-cc}

die() { echo "mkguest: $*" >&2; exit 1; }

kernel=${GUEST_KERNEL:-$(ls -1v /boot/vmlinuz-* 2>/dev/null | tail -n 1)}
[ -n "$kernel" ] && [ -r "$kernel" ] || die "no readable kernel in /boot (scripts/deps.sh guest)"
kver=${kernel##*/vmlinuz-}
moddir=/lib/modules/$kver
[ -f "$moddir/modules.dep" ] || die "no $moddir/modules.dep"
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "no busybox (busybox-static)"
ldd "$busybox" >/dev/null 2>&1 && die "$busybox is not static (busybox-static)"
command -v cpio >/dev/null || die "no cpio"

# the cache key: every input
key=$( { echo "$kernel $kver"; sha256sum "$here/recwriter.c" "$0" "$busybox" "$kernel"; } | sha256sum | cut -c1-16)
if [ -f "$out/key" ] && [ "$(cat "$out/key")" = "$key" ] && [ -s "$out/initramfs.gz" ]; then
    exit 0
fi

mkdir -p "$out"
stage=$(mktemp -d "$out/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,lib/modules}

"$CC" -static -O2 -std=gnu11 -Wall -Wextra -o "$stage/bin/recwriter" "$here/recwriter.c" ||
    die "cannot build recwriter statically (gcc -static needs libc6-dev's libc.a)"
cp "$busybox" "$stage/bin/busybox"
for c in sh mount insmod cat sleep poweroff reboot echo; do ln -s busybox "$stage/bin/$c"; done

# the modules virtio_blk and virtio_pci need, dependencies first
mods=()
add_mod() {
    local name=$1 path deps d m
    path=$(grep -E "(^|/)$name\\.ko(\\.[a-z]+)?:" "$moddir/modules.dep" | head -n 1 | cut -d: -f1)
    [ -n "$path" ] || return 0   # built in
    deps=$(grep -E "^$path:" "$moddir/modules.dep" | cut -d: -f2)
    for d in $deps; do
        d=${d##*/}
        add_mod "${d%%.ko*}"
    done
    for m in "${mods[@]}"; do [ "$m" = "$path" ] && return 0; done
    mods+=("$path")
}
add_mod virtio_pci
add_mod virtio_blk
: >"$stage/modules"
for m in "${mods[@]}"; do
    case $m in
    *.ko) cp "$moddir/$m" "$stage/lib/modules/" ;;
    *.ko.xz) xz -dc "$moddir/$m" >"$stage/lib/modules/$(basename "${m%.xz}")" ;;
    *.ko.zst) zstd -qdc "$moddir/$m" >"$stage/lib/modules/$(basename "${m%.zst}")" ;;
    *) die "module $m: unknown compression" ;;
    esac
    m=$(basename "$m")
    echo "${m%.ko*}.ko" >>"$stage/modules"
done

cat >"$stage/init" <<'EOF'
#!/bin/sh
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in $(cat /modules); do insmod /lib/modules/$m; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
echo "GUEST mode=$mode"
case $mode in
write) /bin/recwriter write /dev/vda "${max:-0}" "${rate:-0}" ;;
verify) /bin/recwriter verify /dev/vda ;;
*) echo "GUEST no mode" ;;
esac
echo "GUEST END $?"
poweroff -f
EOF
chmod 755 "$stage/init"

(cd "$stage" && find . ! -name . | LC_ALL=C sort | cpio -o -H newc --quiet) | gzip -1 >"$out/initramfs.gz.tmp"
cp "$kernel" "$out/vmlinuz.tmp"
mv "$out/initramfs.gz.tmp" "$out/initramfs.gz"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$key" >"$out/key"
