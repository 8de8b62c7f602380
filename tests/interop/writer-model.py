#!/usr/bin/python3
# The model of what tests/tools/nbd-writer wrote, checked against an image
# read back after the server died under it.
#
#   writer-model.py RAW-FILE SEED SPAN
#
# nbd-writer's write number i goes to a block drawn from glibc's rand()
# seeded with SEED, and fills it with the byte i & 0xff after i itself (8
# bytes, little-endian).  Every 4 KiB block of RAW-FILE (the export's
# first SPAN bytes) must then be zeroes (never written, or a write that was
# never acknowledged) or a whole record of a write aimed at that block.
# Durability: the writer has at most 256 requests in flight, so when the
# highest write found, M, was sent, every write up to M - 256 had been
# acknowledged; with --fua each of those was on disk, hence a block must
# hold its last write L up to M - 256, or one sent while L was in flight
# (L - 255 on: NBD does not order requests in flight together), or a later
# one; write 0 writes zeroes.  Prints one line of
# counts, or the first violations; exit 1 when the model does not hold.
# SPDX-License-Identifier: GPL-2.0-or-later

import ctypes
import struct
import sys

BLOCK = 4096
IN_FLIGHT = 256


def targets(seed, nblocks, n):
    """the block of each of the first n writes: two draws per write"""
    libc = ctypes.CDLL(None)
    libc.rand.restype = ctypes.c_int
    libc.srand(ctypes.c_uint(seed))
    rand_max = 2147483647
    out = []
    for _ in range(n):
        a = libc.rand()
        b = libc.rand()
        out.append(((a * rand_max + b) % (1 << 64)) % nblocks)
    return out


def main():
    path, seed, span = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    nblocks = span // BLOCK
    found = {}
    bad = []
    with open(path, 'rb') as f:
        for blk in range(nblocks):
            data = f.read(BLOCK)
            if len(data) < BLOCK:
                bad.append('block %d: short read' % blk)
                break
            if data == bytes(BLOCK):
                continue
            i = struct.unpack('<Q', data[:8])[0]
            if data[8:] != bytes([i & 0xff]) * (BLOCK - 8) or i > 10**8:
                bad.append('block %d: not a whole record (torn or foreign): %r...' %
                           (blk, data[:16]))
                continue
            found[blk] = i
    if bad:
        print('\n'.join(bad[:10]))
        return 1
    if not found:
        print('no write found in the image')
        return 1
    top = max(found.values())
    t = targets(seed, nblocks, top + 1)
    misplaced = ['block %d: holds write %d, aimed at block %d' % (blk, i, t[i])
                 for blk, i in sorted(found.items()) if t[i] != blk]
    if misplaced:
        print('\n'.join(misplaced[:10]))
        return 1
    last = {}
    for i in range(max(0, top - IN_FLIGHT + 1)):
        last[t[i]] = i
    # write 0 writes zeroes; requests in flight together may land in any
    # order, so a block may hold a write sent up to 255 before its last
    # acknowledged one
    if t and t[0] not in found:
        found[t[0]] = 0
    lost = ['block %d: holds write %s, but write %d (acknowledged, FUA) went there' %
            (blk, found.get(blk, 'none (zeroes)'), i)
            for blk, i in sorted(last.items()) if found.get(blk, -1) <= i - IN_FLIGHT]
    if lost:
        print('\n'.join(lost[:10]))
        print('%d acknowledged writes lost' % len(lost))
        return 1
    print('model holds: %d blocks written, highest write %d, %d blocks checked for durability' %
          (len(found), top, len(last)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
