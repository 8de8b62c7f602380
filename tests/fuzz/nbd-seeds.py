#!/usr/bin/env python3
# Seed inputs for fuzz_nbdsrv: what NBD clients send after the server's
# greeting (client flags, options, requests), one session per file.
# usage: nbd-seeds.py OUTDIR
# SPDX-License-Identifier: GPL-2.0-or-later
import os
import struct
import sys

OPTS = 0x49484156454F5054


def opt(o, data=b""):
    return struct.pack(">QII", OPTS, o, len(data)) + data


def name(n):
    return struct.pack(">I", len(n)) + n


def go(o, n, infos=()):
    return opt(o, name(n) + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos))


def meta(o, n, queries):
    return opt(o, name(n) + struct.pack(">I", len(queries)) + b"".join(name(q) for q in queries))


def req(cmd, off=0, length=0, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", 0x25609513, flags, cmd, cookie, off, length) + payload


FLAGS = struct.pack(">I", 3)
seeds = {
    "structured": FLAGS + opt(8) + meta(10, b"disk", [b"base:allocation", b"qemu:allocation-depth"])
    + go(7, b"disk", (0, 1, 2, 3))
    + req(0, 0, 65536) + req(0, 200000, 300000, 4, 2) + req(1, 4096, 512, 1, 3, b"\xaa" * 512)
    + req(7, 0, 1 << 20, 0, 4) + req(7, 300000, 1000, 8, 5) + req(4, 8192, 4096, 0, 6)
    + req(6, 16384, 8192, 2, 7) + req(6, 65536, 65536, 16, 8) + req(5, 0, 131072, 0, 9)
    + req(3, cookie=10) + req(2),
    "export-name": FLAGS + opt(1, b"disk") + req(0, 0, 4096) + req(1, 0, 16, 0, 2, b"x" * 16)
    + req(0, 1 << 20, 1, 0, 3) + req(3, cookie=4) + req(2),
    "options": struct.pack(">I", 1) + opt(3) + go(6, b"ro", (1, 2)) + meta(9, b"disk", [b"qemu:"])
    + meta(9, b"disk", []) + opt(5) + opt(99, b"junk") + opt(8) + opt(8) + go(7, b"nosuch") + opt(2),
    "read-only": FLAGS + opt(8) + go(7, b"ro") + req(1, 0, 4, 0, 1, b"abcd") + req(4, 0, 512, 0, 2)
    + req(0, (1 << 20) - 10, 20, 0, 3) + req(7, 0, 512, 0, 4) + req(9, 0, 0, 0, 5) + req(2),
    "pipeline": FLAGS + opt(8) + meta(10, b"", [b"base:allocation"]) + go(7, b"")
    + b"".join(req(0, i * 4096, 4096, 0, i) for i in range(12)) + req(2),
}
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for k, v in seeds.items():
    with open(os.path.join(out, k), "wb") as f:
        f.write(v)
