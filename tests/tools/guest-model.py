#!/usr/bin/python3
# A guest that writes through NBD and remembers what it was told was
# written: the model that a live operation's result is checked against.
#
#   guest-model.py write URI MODEL [--rate N] [--seconds S] [--stop-file F]
#                  [--span BYTES] [--seed N] [--flush-every N] [--log LOG]
#       Random 4 KiB writes (one at a time, paced at RATE per second) until
#       SECONDS pass or F exists; each block's contents name the write
#       (its sequence number), so stale data cannot pass for new.  A write
#       is in the model once acknowledged; MODEL (JSON: offset -> sequence
#       number of the last acknowledged write) is written at the end, and
#       one line of JSON on stdout: {"writes", "errors", "max_ms"}.
#       Server errors end the run with exit 1 (the model is still written).
#       LOG: every acknowledged write in order, one "SEQ OFFSET" a line.
#       --fua-every N: every Nth write with FUA.  --durable FILE: at the
#       end, what the server said is durable: "flush SEQ" (every write up
#       to SEQ, by the last acknowledged flush), then "fua SEQ" per
#       acknowledged FUA write.
#   guest-model.py expect BEFORE MODEL OUT
#       OUT: the raw image BEFORE (raw) with every write of MODEL applied:
#       what the disk must read as (compare it with qemu-img compare).
#   guest-model.py durable BEFORE LOG DURABLE IMAGE
#       IMAGE (raw) holds every write DURABLE says is durable (write, after
#       a crash): each block the guest wrote holds its last durable write
#       or a later write to it (acknowledged or not), any write if none of
#       them is durable, or what BEFORE holds; every other block as in
#       BEFORE (save the one write that may have been in flight).  Prints
#       counts, or the first wrong blocks and exits 1.
#   guest-model.py prefix BEFORE LOG IMAGE
#       IMAGE (raw) must read as BEFORE with the first K writes of LOG
#       applied, for some K (a copy of the disk as of one moment: the
#       writer has one write in flight at a time); prints K, or exits 1.
# SPDX-License-Identifier: GPL-2.0-or-later
import json
import os
import random
import struct
import sys
import time

BLOCK = 4096


def block_for(seq):
    head = struct.pack("<QQ", 0x6d6f64656c000000, seq)
    return head + bytes([(seq * 7 + 1) % 256]) * (BLOCK - len(head))


def opt(args, name, default, conv=str):
    if name in args:
        i = args.index(name)
        v = conv(args[i + 1])
        del args[i:i + 2]
        return v
    return default


def write(args):
    import nbd
    rate = opt(args, "--rate", 500.0, float)
    seconds = opt(args, "--seconds", 5.0, float)
    stop_file = opt(args, "--stop-file", None)
    span = opt(args, "--span", 0, int)
    seed = opt(args, "--seed", 1, int)
    flush_every = opt(args, "--flush-every", 50, int)
    log_path = opt(args, "--log", None)
    fua_every = opt(args, "--fua-every", 0, int)
    durable_path = opt(args, "--durable", None)
    flushed = 0
    fuas = []
    uri, model_path = args
    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    span = min(span or size, size) // BLOCK
    rng = random.Random(seed)
    model = {}
    log = []
    seq = 0
    errors = 0
    max_lat = 0.0
    start = time.monotonic()
    try:
        while True:
            sched = start + seq / rate
            now = time.monotonic()
            if now < sched:
                time.sleep(sched - now)
            if time.monotonic() - start >= seconds:
                break
            if stop_file and os.path.exists(stop_file):
                break
            seq += 1
            off = rng.randrange(span) * BLOCK
            try:
                fua = bool(fua_every and seq % fua_every == 0)
                h.pwrite(block_for(seq), off, nbd.CMD_FLAG_FUA if fua else 0)
                model[off] = seq
                log.append((seq, off))
                if fua:
                    fuas.append(seq)
                if flush_every and seq % flush_every == 0:
                    h.flush()
                    flushed = seq
            except nbd.Error as e:
                errors += 1
                print("write %d at %d: %s" % (seq, off, e), file=sys.stderr)
                break
            max_lat = max(max_lat, time.monotonic() - sched)
        h.flush()
        flushed = seq
        h.shutdown()
    except nbd.Error as e:
        errors += 1
        print("flush: %s" % e, file=sys.stderr)
    with open(model_path, "w") as f:
        json.dump({str(k): v for k, v in model.items()}, f)
    if log_path:
        with open(log_path, "w") as f:
            f.writelines("%d %d\n" % w for w in log)
    if durable_path:
        with open(durable_path, "w") as f:
            f.write("flush %d\n" % flushed)
            f.writelines("fua %d\n" % q for q in fuas)
    print(json.dumps({"writes": seq, "errors": errors,
                      "max_ms": round(max_lat * 1000, 3)}))
    return 1 if errors else 0


def expect(args):
    before, model_path, out = args
    with open(model_path) as f:
        model = json.load(f)
    with open(before, "rb") as src, open(out, "wb") as dst:
        while True:
            b = src.read(1 << 20)
            if not b:
                break
            dst.write(b)
    with open(out, "r+b") as dst:
        for off, seq in model.items():
            dst.seek(int(off))
            dst.write(block_for(seq))
    return 0


def durable(args):
    before_path, log_path, durable_path, image = args
    with open(log_path) as f:
        log = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    flushed, fuas = 0, set()
    with open(durable_path) as f:
        for line in f:
            k, v = line.split()
            if k == "flush":
                flushed = int(v)
            else:
                fuas.add(int(v))
    with open(before_path, "rb") as f:
        before = f.read()
    with open(image, "rb") as f:
        img = f.read()
    top = log[-1][0] if log else 0
    writes, last_durable = {}, {}
    for seq, off in log:
        writes.setdefault(off, set()).add(seq)
        if seq <= flushed or seq in fuas:
            last_durable[off] = seq
    bad = []
    if len(img) != len(before):
        bad.append("%s is %d bytes, not %d" % (image, len(img), len(before)))
    for off in range(0, min(len(img), len(before)), BLOCK):
        g = img[off:off + BLOCK]
        magic, seq = struct.unpack_from("<QQ", g)
        # (the write in flight at the crash: acknowledged to nobody)
        if magic == 0x6d6f64656c000000 and seq == top + 1 and g == block_for(seq):
            continue
        if off not in writes:
            if g != before[off:off + BLOCK]:
                bad.append("block at %d, never written, changed" % off)
            continue
        d = last_durable.get(off, 0)
        if magic == 0x6d6f64656c000000 and g == block_for(seq) and seq in writes[off] and seq >= d:
            continue
        if not d and g == before[off:off + BLOCK]:
            continue
        what = "write %d" % seq if magic == 0x6d6f64656c000000 else "other data"
        bad.append("block at %d holds %s, not durable write %d or a later one" % (off, what, d))
    if bad:
        print("%s lost what the guest was told is durable (writes to %d, flushed to %d, "
              "%d FUA): %s" % (image, top, flushed, len(fuas), "; ".join(bad[:5])), file=sys.stderr)
        return 1
    print("%d writes, %d blocks durable, all there" % (top, len(last_durable)))
    return 0


def prefix(args):
    before, log_path, image = args
    with open(log_path) as f:
        log = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    with open(image, "rb") as f:
        img = f.read()
    with open(before, "rb") as f:
        state = bytearray(f.read())
    if len(img) < len(state):
        print("%s is shorter than %s" % (image, before), file=sys.stderr)
        return 1
    if len(img) > len(state):
        img = img[:len(state)]
    # the last write the image holds names K: at most one write per
    # offset can be the one it shows, the newest of them bounds K
    k = 0
    for seq, off in log:
        head = struct.unpack_from("<QQ", img, off)
        if head[0] == 0x6d6f64656c000000 and head[1] == seq:
            k = max(k, seq)
    for seq, off in log:
        if seq > k:
            break
        state[off:off + BLOCK] = block_for(seq)
    if state != img:
        for i in range(0, len(img), BLOCK):
            if state[i:i + BLOCK] != img[i:i + BLOCK]:
                print("%s is no copy of the disk as of write %d: it differs at %d"
                      % (image, k, i), file=sys.stderr)
                break
        return 1
    print(k)
    return 0


def main():
    cmds = {"write": write, "expect": expect, "prefix": prefix, "durable": durable}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__ if __doc__ else "usage: guest-model.py write|expect|durable|prefix ...",
              file=sys.stderr)
        return 2
    return cmds[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
