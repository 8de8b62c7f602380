# tests/crash/bitmaps.py IMAGE NAME... - the dirty ranges of the persistent
# bitmaps NAME... of the qcow2 IMAGE, as QEMU exports them: one qemu-nbd -r
# -B NAME... (socket activation) queried for every qemu:dirty-bitmap:NAME
# context at once.  Prints "bitmap NAME: START+LENGTH..." per bitmap
# (merged ranges); exits 1 when qemu-nbd refuses the image or a bitmap.
# Needs the libnbd Python bindings (python3-libnbd).
# SPDX-License-Identifier: GPL-2.0-or-later
import sys

import nbd

CTX = "qemu:dirty-bitmap:"


def main(img, names):
    h = nbd.NBD()
    for n in names:
        h.add_meta_context(CTX + n)
    args = ["qemu-nbd", "-r", "-f", "qcow2"]
    for n in names:
        args += ["-B", n]
    try:
        h.connect_systemd_socket_activation(args + [img])
    except nbd.Error as e:
        print("bitmaps unreadable: %s" % e.string.splitlines()[0] if e.string else "bitmaps unreadable")
        return 1
    size = h.get_size()
    dirty = {n: [] for n in names}
    off = 0
    while off < size:
        reach = {}

        def cb(ctx, start, entries, err):
            n = ctx[len(CTX):]
            p = start
            for i in range(0, len(entries), 2):
                if entries[i + 1] & 1:
                    dirty[n].append((p, p + entries[i]))
                p += entries[i]
            reach[n] = p
            return 0

        h.block_status(min(size - off, 1 << 30), off, cb)
        if len(reach) != len(names) or min(reach.values()) <= off:
            print("bitmaps: no answer for every context")
            return 1
        off = min(reach.values())
    h.shutdown()
    for n in names:
        merged = []
        for a, b in sorted(dirty[n]):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        print("bitmap %s: %s" % (n, " ".join("%d+%d" % (a, b - a) for a, b in merged)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
