#!/usr/bin/env python3
# qcow2edit.py - read and poke qcow2 metadata, for crafting broken images in tests
# SPDX-License-Identifier: GPL-2.0-or-later
#
# usage: qcow2edit.py IMAGE COMMAND [ARGS...] [+ COMMAND [ARGS...]]...
#        qcow2edit.py -        (batch: lines "IMAGE COMMAND [ARGS...]" on stdin)
# (python3 starts slowly: batch the edits of a test file into one run)
#   get FIELD                 print a header field (decimal)
#   set FIELD VALUE           set a header field (VALUE: decimal or 0x hex)
#   l1 IDX [VALUE]            print / set L1 entry IDX
#   l2 GUEST_OFF [VALUE]      print / set the L2 entry mapping guest offset
#   l2addr GUEST_OFF          print the file offset of that L2 entry
#   host GUEST_OFF            print the host cluster offset of a guest offset
#   rc CLUSTER [VALUE]        print / set the refcount of host cluster index
#                             (CLUSTER 'last': the file's last cluster;
#                             VALUE +N / -N: add to the current refcount)
#   rcg GUEST_OFF [VALUE]     the same for the cluster holding a guest offset
#   l2or GUEST_OFF MASK       OR MASK into the L2 entry of a guest offset
#   l2desc GUEST_OFF HOSTOFF  keep the top 2 bits and sector count of a
#                             compressed descriptor, point it at HOSTOFF
#   backing NAME              write NAME as the backing file name in place
#   rtentry IDX [VALUE]       print / set refcount table entry IDX
#   ext TYPE                  print the header offset of extension TYPE (hex)
#   extlen TYPE VALUE         set the length field of extension TYPE
#   bmdir                     print "nb dirsize diroff" of the bitmaps ext
#   bmdir-set FIELD VALUE     set nb|size|offset in the bitmaps extension
#   u8|u16|u32|u64 OFF [VAL]  print / set a big-endian integer at OFF
#   size                      print the file size
# Values are printed in decimal.  Only the first L1 table is used.
import os
import struct
import sys

FIELDS = {
    # name: (offset, struct format)
    'magic': (0, '>I'), 'version': (4, '>I'),
    'backing_file_offset': (8, '>Q'), 'backing_file_size': (16, '>I'),
    'cluster_bits': (20, '>I'), 'size': (24, '>Q'), 'crypt_method': (32, '>I'),
    'l1_size': (36, '>I'), 'l1_table_offset': (40, '>Q'),
    'refcount_table_offset': (48, '>Q'), 'refcount_table_clusters': (56, '>I'),
    'nb_snapshots': (60, '>I'), 'snapshots_offset': (64, '>Q'),
    'incompatible_features': (72, '>Q'), 'compatible_features': (80, '>Q'),
    'autoclear_features': (88, '>Q'), 'refcount_order': (96, '>I'),
    'header_length': (100, '>I'), 'compression_type': (104, '>B'),
}
INT = {'u8': '>B', 'u16': '>H', 'u32': '>I', 'u64': '>Q'}
OFF_MASK = 0x00fffffffffffe00
EXT_NAMES = {'backing_format': 0xe2792aca, 'feature_table': 0x6803f857,
             'bitmaps': 0x23852875, 'crypto': 0x0537be77,
             'data_file': 0x44415441, 'end': 0}


def num(s):
    return int(s, 0)


class Img:
    def __init__(self, fn):
        self.f = open(fn, 'r+b')

    def rd(self, off, fmt):
        self.f.seek(off)
        n = struct.calcsize(fmt)
        b = self.f.read(n)
        if len(b) < n:
            b += b'\0' * (n - len(b))
        return struct.unpack(fmt, b)[0]

    def wr(self, off, fmt, v):
        self.f.seek(off)
        self.f.write(struct.pack(fmt, v))
        self.f.flush()

    def field(self, name):
        off, fmt = FIELDS[name]
        if name == 'refcount_order' and self.field('version') < 3:
            return 4
        return self.rd(off, fmt)

    @property
    def cs(self):
        return 1 << self.field('cluster_bits')

    def extended_l2(self):
        return self.field('version') >= 3 and \
            self.field('incompatible_features') & 0x10

    def l2_addr(self, guest):
        cs = self.cs
        esz = 16 if self.extended_l2() else 8
        per = cs // esz
        l1i, l2i = divmod(guest // cs, per)
        l1 = self.rd(self.field('l1_table_offset') + 8 * l1i, '>Q')
        if not l1 & OFF_MASK:
            sys.exit('guest offset %d has no L2 table' % guest)
        return (l1 & OFF_MASK) + esz * l2i

    def rc_addr(self, cl):
        bits = 1 << self.field('refcount_order')
        per = self.cs * 8 // bits
        rt = self.rd(self.field('refcount_table_offset') + 8 * (cl // per), '>Q')
        if not rt:
            sys.exit('cluster %d has no refcount block' % cl)
        return rt, (cl % per) * bits, bits

    def get_rc(self, cl):
        rb, bit, bits = self.rc_addr(cl)
        if bits >= 8:
            return self.rd(rb + bit // 8, {8: '>B', 16: '>H', 32: '>I', 64: '>Q'}[bits])
        byte = self.rd(rb + bit // 8, '>B')
        return (byte >> (bit % 8)) & ((1 << bits) - 1)

    def set_rc(self, cl, v):
        rb, bit, bits = self.rc_addr(cl)
        if bits >= 8:
            self.wr(rb + bit // 8, {8: '>B', 16: '>H', 32: '>I', 64: '>Q'}[bits], v)
            return
        byte = self.rd(rb + bit // 8, '>B')
        mask = ((1 << bits) - 1) << (bit % 8)
        byte = (byte & ~mask) | ((v << (bit % 8)) & mask)
        self.wr(rb + bit // 8, '>B', byte)

    def ext(self, typ):
        ver = self.field('version')
        off = self.field('header_length') if ver >= 3 else 72
        end = self.cs
        while off + 8 <= end:
            t = self.rd(off, '>I')
            ln = self.rd(off + 4, '>I')
            if t == typ:
                return off
            if t == 0:
                break
            off += 8 + ((ln + 7) & ~7)
        sys.exit('extension 0x%08x not found' % typ)


def rc_value(img, cl, v):
    if v[0] in '+-':
        return img.get_rc(cl) + int(v, 0)
    return num(v)


def cluster_arg(img, fn, a):
    if a == 'last':
        return (os.path.getsize(fn) + img.cs - 1) // img.cs - 1
    return num(a)


def run(img, fn, cmd, args):
    out = None
    if cmd == 'get':
        out = img.field(args[0])
    elif cmd == 'set':
        off, fmt = FIELDS[args[0]]
        img.wr(off, fmt, num(args[1]))
    elif cmd == 'l1':
        addr = img.field('l1_table_offset') + 8 * num(args[0])
        if len(args) > 1:
            img.wr(addr, '>Q', num(args[1]))
        else:
            out = img.rd(addr, '>Q')
    elif cmd in ('l2', 'l2addr'):
        addr = img.l2_addr(num(args[0]))
        if cmd == 'l2addr':
            out = addr
        elif len(args) > 1:
            img.wr(addr, '>Q', num(args[1]))
        else:
            out = img.rd(addr, '>Q')
    elif cmd == 'host':
        out = img.rd(img.l2_addr(num(args[0])), '>Q') & OFF_MASK
    elif cmd in ('rc', 'rcg'):
        if cmd == 'rc':
            cl = cluster_arg(img, fn, args[0])
        else:
            cl = (img.rd(img.l2_addr(num(args[0])), '>Q') & OFF_MASK) // img.cs
        if len(args) > 1:
            img.set_rc(cl, rc_value(img, cl, args[1]))
        else:
            out = img.get_rc(cl)
    elif cmd == 'l2or':
        addr = img.l2_addr(num(args[0]))
        img.wr(addr, '>Q', img.rd(addr, '>Q') | num(args[1]))
    elif cmd == 'l2desc':
        addr = img.l2_addr(num(args[0]))
        cb = img.field('cluster_bits')
        x = 62 - (cb - 8)
        e = img.rd(addr, '>Q')
        img.wr(addr, '>Q', (e & ~((1 << x) - 1)) | num(args[1]))
    elif cmd == 'backing':
        name = args[0].encode()
        img.f.seek(img.field('backing_file_offset'))
        img.f.write(name)
        img.f.flush()
        img.wr(16, '>I', len(name))
    elif cmd == 'rtentry':
        addr = img.field('refcount_table_offset') + 8 * num(args[0])
        if len(args) > 1:
            img.wr(addr, '>Q', num(args[1]))
        else:
            out = img.rd(addr, '>Q')
    elif cmd == 'ext':
        t = EXT_NAMES.get(args[0])
        out = img.ext(t if t is not None else num(args[0]))
    elif cmd == 'extlen':
        t = EXT_NAMES.get(args[0])
        off = img.ext(t if t is not None else num(args[0]))
        img.wr(off + 4, '>I', num(args[1]))
    elif cmd in ('bmdir', 'bmdir-set'):
        off = img.ext(EXT_NAMES['bitmaps']) + 8
        if cmd == 'bmdir':
            out = '%d %d %d' % (img.rd(off, '>I'), img.rd(off + 8, '>Q'),
                                img.rd(off + 16, '>Q'))
        else:
            where = {'nb': (0, '>I'), 'size': (8, '>Q'), 'offset': (16, '>Q')}
            o, fmt = where[args[0]]
            img.wr(off + o, fmt, num(args[1]))
    elif cmd in INT:
        if len(args) > 1:
            img.wr(num(args[0]), INT[cmd], num(args[1]))
        else:
            out = img.rd(num(args[0]), INT[cmd])
    elif cmd == 'size':
        out = os.path.getsize(fn)
    else:
        sys.exit('unknown command %s' % cmd)
    if out is not None:
        print(out)


def run_all(fn, words):
    img = Img(fn)
    cmd = []
    for w in words + ['+']:
        if w == '+':
            if cmd:
                run(img, fn, cmd[0], cmd[1:])
            cmd = []
        else:
            cmd.append(w)
    img.f.close()


def main(argv):
    if len(argv) == 2 and argv[1] == '-':
        import shlex
        for line in sys.stdin:
            words = shlex.split(line, comments=True)
            if words:
                run_all(words[0], words[1:])
        return
    if len(argv) < 3:
        sys.exit('usage: qcow2edit.py IMAGE COMMAND [ARGS...]')
    run_all(argv[1], argv[2:])


if __name__ == '__main__':
    main(sys.argv)
