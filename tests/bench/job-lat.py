#!/usr/bin/python3
# One live-job measurement for tests/bench/jobs.bash: a job started over
# QMP on a running server (blockctl agent or qemu-storage-daemon), idle or
# while a guest writer (tests/tools/nbd-writer, open loop, --log) writes to
# the disk.
#
#   job-lat.py --qmp SOCK --job mirror|stream|commit [--target FILE]
#              [--copy-mode MODE] [--speed BYTES/S] [--pre S] [--hold S]
#              [--writer PATH --uri URI --rate R --dir DIR] [--keep-log] DEVICE
#
# mirror: drive-mirror sync=full to a new qcow2 FILE, wait for
# BLOCK_JOB_READY, --hold seconds, then block-job-complete (the pivot) and
# wait for BLOCK_JOB_COMPLETED.  commit: block-commit of the active layer
# into the bottom of the chain, completed as soon as it is ready.
# stream: block-stream of everything below the top, to BLOCK_JOB_COMPLETED.
# With a writer, it runs --pre seconds before the job starts (the "before"
# figures) and goes on until the job has ended.
#
# Prints one JSON line:
#   ready_s      from sending the job command to BLOCK_JOB_READY (mirror,
#                commit) or to BLOCK_JOB_COMPLETED (stream)
#   done_s       from sending the job command to BLOCK_JOB_COMPLETED
#                (for mirror it includes --hold)
#   complete_ms  from sending block-job-complete to BLOCK_JOB_COMPLETED
#   before_p50_ms, before_p99_ms   the writes scheduled before the job
#   during_p50_ms, during_p99_ms, during_max_ms, during_n
#                the writes scheduled between the job command and READY
#                (stream: the end of the job): "during the copy"
#   gap_ms       the longest time, from its scheduled time to its
#                completion, of a write that overlapped the completion
#                (scheduled before BLOCK_JOB_COMPLETED came, done after
#                block-job-complete was sent): the pivot gap (when none
#                did, the first write scheduled after the completion)
#   writes       the writes the writer completed
# Latencies are null when there was no writer (or no such write).
# Exits 1 when the job fails or the writer reports an error.
# SPDX-License-Identifier: GPL-2.0-or-later

import argparse
import json
import os
import subprocess
import sys
import time

from benchqmp import Qmp


def pct(v, p):
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, len(v) * p // 100)] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--qmp', required=True)
    ap.add_argument('--job', required=True, choices=['mirror', 'stream', 'commit'])
    ap.add_argument('--target')
    ap.add_argument('--copy-mode')
    ap.add_argument('--speed', type=int, help="the job's speed limit (bytes/s)")
    ap.add_argument('--pre', type=float, default=1.0)
    ap.add_argument('--hold', type=float, default=0.5)
    ap.add_argument('--writer')
    ap.add_argument('--uri')
    ap.add_argument('--rate', type=float, default=0)
    ap.add_argument('--dir', default='.')
    ap.add_argument('--keep-log', action='store_true',
                    help='keep DIR/job-lat-writer.log ("SCHED DONE" per write) and add '
                         'the job times (t0, t_ready, t_c0, t_done) to the JSON line')
    ap.add_argument('device')
    a = ap.parse_args()

    q = Qmp(a.qmp, timeout=120)
    w = None
    log = os.path.join(a.dir, 'job-lat-writer.log')
    stop = os.path.join(a.dir, 'job-lat-writer.stop')
    if a.rate > 0:
        if os.path.exists(stop):
            os.unlink(stop)
        w = subprocess.Popen([a.writer, a.uri, str(a.rate), '600', '--log', log,
                              '--stop-file', stop],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(a.pre)

    jid = 'j'
    if a.job == 'mirror':
        args = {'device': a.device, 'job-id': jid, 'target': a.target, 'format': 'qcow2',
                'sync': 'full'}
        if a.copy_mode:
            args['copy-mode'] = a.copy_mode
        cmd = 'drive-mirror'
    elif a.job == 'commit':
        cmd, args = 'block-commit', {'device': a.device, 'job-id': jid}
    else:
        cmd, args = 'block-stream', {'device': a.device, 'job-id': jid}

    if a.speed:
        args['speed'] = a.speed
    status = 0
    t0 = time.monotonic()
    r = q.call(cmd, args)
    t_ready = t_c0 = t_done = None
    if 'error' in r:
        print('job-lat: %s failed: %s' % (cmd, json.dumps(r['error'])), file=sys.stderr)
        status = 1
    else:
        try:
            if a.job == 'stream':
                e = q.wait(['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'])
                t_ready = t_done = e['t']
            else:
                e = q.wait(['BLOCK_JOB_READY', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'])
                t_ready = e['t']
                if e['event'] == 'BLOCK_JOB_READY':
                    if a.job == 'mirror' and a.hold > 0:
                        time.sleep(a.hold)
                    t_c0 = time.monotonic()
                    r = q.call('block-job-complete', {'device': jid})
                    if 'error' in r:
                        print('job-lat: block-job-complete failed: %s' % json.dumps(r['error']),
                              file=sys.stderr)
                        status = 1
                    e = q.wait(['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'])
                t_done = e['t']
            if e['event'] != 'BLOCK_JOB_COMPLETED' or 'error' in (e.get('data') or {}):
                print('job-lat: the job ended with %s' % json.dumps(e), file=sys.stderr)
                status = 1
        except (TimeoutError, EOFError, OSError) as ex:
            print('job-lat: %s' % ex, file=sys.stderr)
            status = 1

    res = {'ready_s': None if t_ready is None else t_ready - t0,
           'done_s': None if t_done is None else t_done - t0,
           'complete_ms': None if t_c0 is None or t_done is None else (t_done - t_c0) * 1000,
           'before_p50_ms': None, 'before_p99_ms': None, 'during_p50_ms': None,
           'during_p99_ms': None, 'during_max_ms': None, 'during_n': 0, 'gap_ms': None,
           'writes': 0}
    if w:
        time.sleep(0.2)
        open(stop, 'w').close()
        out, err = w.communicate(timeout=60)
        os.unlink(stop)
        if w.returncode != 0:
            print('job-lat: writer exited %d: %s %s' % (w.returncode, out.decode().strip(),
                                                      err.decode().strip()), file=sys.stderr)
            status = 1
        else:
            res['writes'] = json.loads(out)['writes']
            before, during, gap, first_after = [], [], None, None
            end = t_ready if t_ready is not None else float('inf')
            with open(log) as f:
                for line in f:
                    sched, done = map(float, line.split())
                    if sched < t0:
                        before.append(done - sched)
                    elif sched < end:
                        during.append(done - sched)
                    if t_c0 is not None and t_done is not None and sched <= t_done and \
                            done >= t_c0:
                        gap = max(gap or 0.0, done - sched)
                    elif t_done is not None and sched > t_done and first_after is None:
                        first_after = done - sched
            if gap is None and t_c0 is not None:
                # a completion quicker than the gap between two writes: the
                # first write after it is the one that would have waited
                gap = first_after
            if not a.keep_log:
                os.unlink(log)
            res.update(before_p50_ms=pct(before, 50), before_p99_ms=pct(before, 99),
                       during_p50_ms=pct(during, 50), during_p99_ms=pct(during, 99),
                       during_max_ms=pct(during, 100), during_n=len(during),
                       gap_ms=None if gap is None else gap * 1000)
    if a.keep_log:
        res.update(t0=t0, t_ready=t_ready, t_c0=t_c0, t_done=t_done)
    print(json.dumps(res))
    return status


if __name__ == '__main__':
    sys.exit(main())
