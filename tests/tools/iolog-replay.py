#!/usr/bin/python3
# tests/tools/iolog-replay.py - turn the files a killed blockctl left into
# a state a power failure at that moment could have left, from the write
# log the run kept (BLOCKCTL_IOLOG, lib/io.h)
# SPDX-License-Identifier: GPL-2.0-or-later
#
#   iolog-replay.py LOG INODES BEFORE SUBSET
#
# LOG     the log of the run (killed at some call: everything in it happened)
# INODES  "INO NAME" lines: the files there were before the run (NAME
#         absolute), whose contents before the run are BEFORE/basename(NAME)
# BEFORE  the folder of those contents
# SUBSET  which writes not yet made durable survive: none, all, or
#         random:SEED (each one kept or lost by a coin, seeded)
#
# The model (per file durability, as a journaling file system gives):
#  - a write survives when an fsync or fdatasync of its file began after
#    it completed; otherwise it is in SUBSET (fallocate counts as a write)
#  - ftruncate and an open with O_TRUNC are metadata: they always survive
#  - a file created, a rename or an unlink survives when a sync of its
#    folder began after it (for a rename, of both folders); of those that
#    are not durable, a prefix survives (namespace operations reach the
#    disk in order): none of them for "none", all for "all", a random
#    number for random:SEED
# The files are changed in place (their inodes are those the job's journal
# recorded): a file whose creation is lost is removed, a rename that is
# lost is undone (a file it replaced comes back with the contents it has
# in this state), an unlink that is lost is undone (the file comes back
# at its path, with its permissions and the contents it has in this
# state), and each file written is rewritten with its contents in this
# state.  (A file is its inode number and which file of that number it
# is: a number an unlink freed may be given to a file created later.  A
# file that comes back has a new number; the replay follows it.)
#
# Prints one line on stdout: "unflushed W kept K; namespace N undone U;
# files F rewritten R".
import os
import random
import struct
import sys

HDR = struct.Struct("=IIQQQQQQQ")
MAGIC = 0x4C4F4942
OPEN, WRITE, FSYNC, FDATASYNC, FTRUNCATE, FALLOCATE, RENAME, DIRSYNC, UNLINK = range(1, 10)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10


def read_log(path):
    recs = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + HDR.size <= len(data):
        magic, typ, seq, dev, ino, off, ln, aux, plen = HDR.unpack_from(data, pos)
        if magic != MAGIC:
            sys.exit("iolog-replay: %s: bad record at byte %d" % (path, pos))
        pos += HDR.size
        payload = data[pos:pos + plen]
        if len(payload) < plen:
            break       # (a record cut by the kill: never happened)
        pos += plen
        recs.append(dict(type=typ, seq=seq, ino=ino, off=off, len=ln, aux=aux,
                         payload=payload))
    return recs


def apply(buf, r):
    t = r["type"]
    if t == WRITE:
        end = r["off"] + r["len"]
        if len(buf) < end:
            buf.extend(bytes(end - len(buf)))
        buf[r["off"]:end] = r["payload"]
    elif t == FTRUNCATE:
        n = r["off"]
        if n < len(buf):
            del buf[n:]
        else:
            buf.extend(bytes(n - len(buf)))
    elif t == OPEN:
        del buf[:]          # (an open that truncates)
    elif t == FALLOCATE:
        mode, off, ln = r["aux"], r["off"], r["len"]
        end = off + ln
        size = len(buf)
        if not mode & FALLOC_FL_KEEP_SIZE and end > size:
            buf.extend(bytes(end - size))
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            e = min(end, len(buf))
            if off < e:
                buf[off:e] = bytes(e - off)


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: iolog-replay.py LOG INODES BEFORE none|all|random:SEED")
    log, inodes, before, subset = sys.argv[1:]
    if subset.startswith("random:"):
        rng = random.Random(subset)
    elif subset in ("none", "all"):
        rng = None
    else:
        sys.exit("iolog-replay: bad subset '%s'" % subset)

    def coin():
        return subset == "all" or (rng is not None and rng.random() < 0.5)

    base = {}           # file -> path of its contents before the run
    with open(inodes) as f:
        for line in f:
            ino, name = line.rstrip("\n").split(" ", 1)
            base[(int(ino), 0)] = os.path.join(before, os.path.basename(name))
    recs = read_log(log)

    # A file is (INO, GEN): an inode number freed by an unlink may be
    # given to a file created later, a new GEN of it.
    gen = {}            # ino -> the GEN of the last file with that number
    seen = set(ino for ino, _ in base)
    for r in recs:
        ino = r["ino"]
        if r["type"] == OPEN and r["off"] == 1 and ino in seen:
            gen[ino] = gen.get(ino, 0) + 1
        seen.add(ino)
        r["file"] = (ino, gen.get(ino, 0))
        if r["type"] == RENAME and r["aux"]:
            r["replaced"] = (r["aux"], gen.get(r["aux"], 0))

    # what each sync covers
    durable = {}        # file -> the last seq a sync of it covers
    dirdurable = {}     # folder -> the last seq a sync of it covers
    for r in recs:
        if r["type"] in (FSYNC, FDATASYNC):
            durable[r["file"]] = max(durable.get(r["file"], 0), r["aux"])
        elif r["type"] == DIRSYNC:
            d = os.path.normpath(r["payload"].rstrip(b"\0").decode())
            dirdurable[d] = max(dirdurable.get(d, 0), r["aux"])

    # the data operations that survive, per file
    ops = {}
    unflushed = kept = 0
    for r in recs:
        t = r["type"]
        if t == OPEN and not (r["aux"] & os.O_TRUNC):
            continue
        if t in (WRITE, FALLOCATE):
            if r["seq"] > durable.get(r["file"], 0):
                unflushed += 1
                if not coin():
                    continue
                kept += 1
        elif t not in (FTRUNCATE, OPEN):
            continue
        ops.setdefault(r["file"], []).append(r)

    def contents(fi):
        buf = bytearray()
        if fi in base:
            with open(base[fi], "rb") as f:
                buf = bytearray(f.read())
        for r in ops.get(fi, []):
            apply(buf, r)
        return bytes(buf)

    # the namespace operations that are not durable: a prefix survives
    ns = []
    for r in recs:
        if (r["type"] == OPEN and r["off"] == 1) or r["type"] == UNLINK:
            paths = [r["payload"].rstrip(b"\0").decode()]
        elif r["type"] == RENAME:
            paths = [p.decode() for p in r["payload"].split(b"\0")[:2]]
        else:
            continue
        if any(r["seq"] > dirdurable.get(os.path.dirname(os.path.normpath(p)), 0)
               for p in paths):
            ns.append((r, paths))
    if subset == "all":
        keep_ns = len(ns)
    elif subset == "none":
        keep_ns = 0
    else:
        keep_ns = rng.randint(0, len(ns))
    # a file that came back is a new inode: now[FILE] is its number
    now = {}

    def inode(fi):
        # the inode number FILE has now (None: an older file of that number)
        if fi in now:
            return now[fi]
        return fi[0] if fi[1] == gen.get(fi[0], 0) else None

    def is_at(p, fi):
        try:
            return os.lstat(p).st_ino == inode(fi)
        except FileNotFoundError:
            return False

    def bring_back(p, fi, mode=0o644):
        # (its contents in this state; a journal or an image, read by name)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(contents(fi))
        os.chmod(p, mode)
        now[fi] = os.lstat(p).st_ino

    undone = 0
    for r, paths in reversed(ns[keep_ns:]):
        if r["type"] == OPEN:
            p = paths[0]
            if is_at(p, r["file"]):
                os.unlink(p)
                undone += 1
        elif r["type"] == UNLINK:
            p = paths[0]
            if not os.path.lexists(p):
                bring_back(p, r["file"], r["aux"] & 0o7777 or 0o644)
                undone += 1
        else:
            src, dst = paths
            if is_at(dst, r["file"]):
                os.rename(dst, src)
                undone += 1
                if r["aux"]:
                    # the file it replaced comes back
                    bring_back(dst, r["replaced"])

    # each file written: its contents in this state, in place
    where = {}
    folders = set()
    for r in recs:
        if r["type"] in (OPEN, DIRSYNC, UNLINK):
            p = r["payload"].rstrip(b"\0").decode()
            folders.add(p if r["type"] == DIRSYNC else os.path.dirname(p))
        elif r["type"] == RENAME:
            for p in r["payload"].split(b"\0")[:2]:
                folders.add(os.path.dirname(p.decode()))
    for d in folders:
        try:
            for e in os.scandir(d):
                if e.is_file(follow_symlinks=False):
                    where[e.inode()] = e.path
        except FileNotFoundError:
            pass
    rewritten = 0
    for fi in ops:
        p = where.get(inode(fi))
        if p is None:
            continue
        want = contents(fi)
        with open(p, "rb") as f:
            have = f.read()
        if have != want:
            with open(p, "r+b") as f:
                f.write(want)
                f.truncate(len(want))
            rewritten += 1
    print("unflushed %d kept %d; namespace %d undone %d; files %d rewritten %d" %
          (unflushed, kept, len(ns), undone, len(ops), rewritten))


main()
