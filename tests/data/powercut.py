#!/usr/bin/env python3
# powercut.py - what a power cut can leave of the header of a qcow2 image
# SPDX-License-Identifier: GPL-2.0-or-later
#
# usage: powercut.py DURABLE NEXT LIMIT OUTPREFIX
#
# DURABLE is the image file as of a completed sync, NEXT as of the next
# sync (every write in between done).  A power cut in between keeps any
# subset of the 512-byte sectors written since DURABLE.  For each subset of
# the sectors in [0, LIMIT) (the header cluster) that differ between the
# two, this writes OUTPREFIX.N: DURABLE with those sectors from NEXT, and
# NEXT with those sectors (only) from DURABLE (the rest of the file then as
# of either sync).  Identical variants are written once, and neither
# DURABLE nor NEXT is among them.  Prints the names written, one a line.
import sys

SECTOR = 512
MAX_SECTORS = 10


def main(argv):
    if len(argv) != 5:
        sys.stderr.write('usage: powercut.py DURABLE NEXT LIMIT OUTPREFIX\n')
        return 64
    with open(argv[1], 'rb') as f:
        durable = f.read()
    with open(argv[2], 'rb') as f:
        nxt = f.read()
    limit = int(argv[3], 0)
    prefix = argv[4]
    end = min(limit, len(durable), len(nxt))
    diff = [off for off in range(0, end, SECTOR)
            if durable[off:off + SECTOR] != nxt[off:off + SECTOR]]
    if len(diff) > MAX_SECTORS:
        sys.stderr.write('powercut.py: %d header sectors differ (at most %d)\n'
                         % (len(diff), MAX_SECTORS))
        return 1
    seen = {durable, nxt}
    n = 0
    for mask in range(1, 1 << len(diff)):
        picked = [off for i, off in enumerate(diff) if mask & (1 << i)]
        for base, other in ((durable, nxt), (nxt, durable)):
            img = bytearray(base)
            for off in picked:
                img[off:off + SECTOR] = other[off:off + SECTOR]
            img = bytes(img)
            if img in seen:
                continue
            seen.add(img)
            name = '%s.%d' % (prefix, n)
            n += 1
            with open(name, 'wb') as f:
                f.write(img)
            print(name)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
