#!/usr/bin/python3
# One live-snapshot measurement for tests/bench/run.sh: a QMP `transaction`
# of blockdev-snapshot-sync actions (one per disk) sent to a running
# server (blockctl agent or qemu-storage-daemon), optionally while a guest
# writer (tests/tools/nbd-writer, open loop) writes to each disk.
#
#   snap-gap.py --qmp SOCK --key device|node-name --dir DIR
#               [--writer PATH --rate R --secs S --uri URI ...] DISK...
#
# The snapshot of DISK goes to DIR/DISK-snap.qcow2.  With writers, the
# transaction is sent half way through their run.  Prints one line:
#   ROUND_TRIP_MS GAP_MS WRITES
# ROUND_TRIP_MS: from sending the transaction to reading its answer.
# GAP_MS: the longest time any guest write that overlapped the
# transaction (scheduled before its answer came or within 5 ms after it,
# completed after it was sent) took from its scheduled time to its
# completion ('-' when idle).
# WRITES: the number of writes the writers completed (0 when idle).
# OUT_P99_MS, OUT_MAX_MS: the p99 and the longest of the other writes (the
# latency the guest sees anyway on this machine now: what GAP_MS is to be
# read against; '-' when idle).
# Exits 1 when the transaction fails or a writer reports an error.
# SPDX-License-Identifier: GPL-2.0-or-later

import argparse
import json
import os
import subprocess
import sys
import time

from benchqmp import Qmp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--qmp', required=True)
    ap.add_argument('--key', default='device', choices=['device', 'node-name'])
    ap.add_argument('--dir', required=True)
    ap.add_argument('--writer')
    ap.add_argument('--rate', type=float, default=0)
    ap.add_argument('--secs', type=float, default=3)
    ap.add_argument('--uri', action='append', default=[])
    ap.add_argument('disks', nargs='+')
    a = ap.parse_args()

    q = Qmp(a.qmp)
    load = a.rate > 0
    writers = []
    if load:
        if len(a.uri) != len(a.disks) or not a.writer:
            print('snap-gap: --writer and one --uri per disk are needed with --rate',
                  file=sys.stderr)
            return 2
        for i, uri in enumerate(a.uri):
            log = os.path.join(a.dir, 'writer-%d.log' % i)
            writers.append((log, subprocess.Popen(
                [a.writer, uri, str(a.rate), str(a.secs), '--seed', str(i + 1), '--log', log],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
        time.sleep(a.secs / 2)

    actions = [{'type': 'blockdev-snapshot-sync',
                'data': {a.key: d, 'snapshot-file': os.path.join(a.dir, d + '-snap.qcow2'),
                         'snapshot-node-name': d + '-snap', 'format': 'qcow2'}} for d in a.disks]
    t0 = time.monotonic()
    q.send('transaction', {'actions': actions})
    r = q.answer()
    t1 = time.monotonic()
    status = 0
    if 'error' in r:
        print('snap-gap: transaction failed: %s' % json.dumps(r['error']), file=sys.stderr)
        status = 1

    gap = None
    writes = 0
    outside = []
    for log, p in writers:
        out, err = p.communicate(timeout=a.secs * 4 + 30)
        if p.returncode != 0:
            print('snap-gap: writer exited %d: %s %s' % (p.returncode, out.decode().strip(),
                                                       err.decode().strip()), file=sys.stderr)
            status = 1
            continue
        writes += json.loads(out)['writes']
        with open(log) as f:
            for line in f:
                sched, done = map(float, line.split())
                # overlapping the transaction, or scheduled within 5 ms
                # after its answer (what it left to do after answering)
                if sched <= t1 + 0.005 and done >= t0:
                    gap = max(gap or 0.0, done - sched)
                else:
                    outside.append(done - sched)
        os.unlink(log)
    if load and gap is None:
        print('snap-gap: no guest write overlapped the transaction', file=sys.stderr)
        status = 1
    outside.sort()

    def ms(v):
        return '-' if v is None else '%.3f' % (v * 1000)
    print('%.3f %s %d %s %s' % ((t1 - t0) * 1000, ms(gap), writes,
                                ms(outside[len(outside) * 99 // 100] if outside else None),
                                ms(outside[-1] if outside else None)))
    return status


if __name__ == '__main__':
    sys.exit(main())
