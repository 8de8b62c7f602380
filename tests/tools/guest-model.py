#!/usr/bin/python3
# A guest that writes through NBD and remembers what it was told was
# written: the model that a live operation's result is checked against.
#
#   guest-model.py write URI MODEL [--rate N] [--seconds S] [--stop-file F]
#                  [--span BYTES] [--seed N] [--flush-every N]
#       Random 4 KiB writes (one at a time, paced at RATE per second) until
#       SECONDS pass or F exists; each block's contents name the write
#       (its sequence number), so stale data cannot pass for new.  A write
#       is in the model once acknowledged; MODEL (JSON: offset -> sequence
#       number of the last acknowledged write) is written at the end, and
#       one line of JSON on stdout: {"writes", "errors", "max_ms"}.
#       Server errors end the run with exit 1 (the model is still written).
#   guest-model.py expect BEFORE MODEL OUT
#       OUT: the raw image BEFORE (raw) with every write of MODEL applied:
#       what the disk must read as (compare it with qemu-img compare).
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
    uri, model_path = args
    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    span = min(span or size, size) // BLOCK
    rng = random.Random(seed)
    model = {}
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
                h.pwrite(block_for(seq), off)
                model[off] = seq
                if flush_every and seq % flush_every == 0:
                    h.flush()
            except nbd.Error as e:
                errors += 1
                print("write %d at %d: %s" % (seq, off, e), file=sys.stderr)
                break
            max_lat = max(max_lat, time.monotonic() - sched)
        h.flush()
        h.shutdown()
    except nbd.Error as e:
        errors += 1
        print("flush: %s" % e, file=sys.stderr)
    with open(model_path, "w") as f:
        json.dump({str(k): v for k, v in model.items()}, f)
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


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("write", "expect"):
        print(__doc__ if __doc__ else "usage: guest-model.py write|expect ...", file=sys.stderr)
        return 2
    return (write if sys.argv[1] == "write" else expect)(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
