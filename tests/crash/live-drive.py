#!/usr/bin/python3
# tests/crash/live-drive.py - one live operation of the crash matrix
# (tests/crash/live.bash), driven over an agent's QMP socket while a guest
# writes through its NBD export.
#
#   live-drive.py SOCKET OP RULES      the operation, with the fault rules
#                                      RULES (lib/io.h) armed where it
#                                      begins (x-blockctl-fault)
#   live-drive.py SOCKET finish OP     after a restart: what is left of OP
#                                      (a restored job resumed and pivoted,
#                                      a snapshot or stream made again)
#                                      prints "finished job BYTES" (BYTES:
#                                      the restored job's progress at its
#                                      end, the bytes it went over),
#                                      "finished again" or "finished nothing"
#
# OP: snapshot, stream, commit (active, with its pivot), mirror (until
# READY), mirror-ready (armed once READY, the guest writing meanwhile),
# pivot (armed once READY, then block-job-complete).  The folder is the
# one of the images (the overlay s.qcow2, the target t.qcow2).
# Prints one line: "killed" (the agent died: the connection closed),
# "done N" (the operation ended; N: the calls the rule counted), or
# "error MESSAGE" (exit 1).
# SPDX-License-Identifier: GPL-2.0-or-later
import json
import os
import socket
import sys
import time

WINDOW = 0.5        # seconds of guest writes after a step that has few calls


class Killed(Exception):
    pass


class Failed(Exception):
    pass


class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.s.settimeout(60)
        self.f = self.s.makefile("rb")
        self.events = []
        self.read()
        self.cmd("qmp_capabilities")

    def read(self):
        try:
            line = self.f.readline()
        except (ConnectionResetError, socket.timeout) as e:
            raise Killed() from e
        if not line:
            raise Killed()
        return json.loads(line)

    def cmd(self, name, args=None, ok=True):
        msg = {"execute": name}
        if args is not None:
            msg["arguments"] = args
        try:
            self.s.sendall((json.dumps(msg) + "\n").encode())
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Killed() from e
        while True:
            m = self.read()
            if "event" in m:
                self.events.append(m)
                continue
            if ok and "error" in m:
                raise Failed("%s: %s" % (name, m["error"].get("desc")))
            return m

    def wait(self, event, timeout=60):
        end = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == event:
                    del self.events[:i + 1]
                    return e
            if time.monotonic() > end:
                raise Failed("no %s in %d s" % (event, timeout))
            m = self.read()
            if "event" in m:
                self.events.append(m)

    def sleep(self, secs):
        """a pause that notices the agent's death"""
        end = time.monotonic() + secs
        while time.monotonic() < end:
            self.cmd("query-jobs")
            time.sleep(0.05)

    def arm(self, rules):
        return self.cmd("x-blockctl-fault", {"rules": rules})["return"]["counts"]


def mirror_args(d):
    return {"device": "vda", "job-id": "j", "target": os.path.join(d, "t.qcow2"),
            "format": "qcow2", "sync": "full"}


def run(q, op, rules):
    d = os.getcwd()
    if op in ("mirror-ready", "pivot"):
        q.cmd("drive-mirror", mirror_args(d))
        q.wait("BLOCK_JOB_READY")
    q.arm(rules)
    if op == "snapshot":
        q.cmd("blockdev-snapshot-sync", {"device": "vda", "format": "qcow2",
                                         "snapshot-file": os.path.join(d, "s.qcow2")})
        q.sleep(WINDOW)
    elif op == "stream":
        # (slowed down: the guest's writes to the top meet the copy into it)
        q.cmd("block-stream", {"device": "vda", "job-id": "j", "speed": 16 << 20})
        q.wait("BLOCK_JOB_COMPLETED")
    elif op == "commit":
        q.cmd("block-commit", {"device": "vda", "job-id": "j", "base-node": "vda-2"})
        q.wait("BLOCK_JOB_READY")
        q.cmd("block-job-complete", {"device": "j"})
        q.wait("BLOCK_JOB_COMPLETED")
    elif op == "mirror":
        q.cmd("drive-mirror", mirror_args(d))
        q.wait("BLOCK_JOB_READY")
    elif op == "mirror-ready":
        q.sleep(WINDOW)
    elif op == "pivot":
        q.cmd("block-job-complete", {"device": "j"})
        q.wait("BLOCK_JOB_COMPLETED")
        q.sleep(WINDOW / 2)
    else:
        raise Failed("unknown operation %s" % op)
    return q.arm("")


def job_status(q):
    jobs = q.cmd("query-jobs")["return"]
    return jobs[0]["status"] if jobs else None


def finish(q, op):
    """what is left of OP after a restart (the state file names the disk)"""
    d = os.getcwd()
    st = job_status(q)
    if st is not None:
        # a restored job: resumed, then pivoted (or, mirror-ready, cancelled
        # once ready: the source keeps the disk)
        if st == "paused":
            q.cmd("block-job-resume", {"device": "j"})
        if job_status(q) != "ready":
            q.wait("BLOCK_JOB_READY")
        if op == "mirror-ready":
            q.cmd("block-job-cancel", {"device": "j"})
        else:
            q.cmd("block-job-complete", {"device": "j"})
        # (its progress: the bytes the restored job went over, the bulk
        # copy from the journal's offset and the dirty regions)
        e = q.wait("BLOCK_JOB_COMPLETED")
        return "job %d" % e["data"]["offset"]
    top = [b for b in q.cmd("query-block")["return"] if b["device"] == "vda"][0]["inserted"]
    if op == "snapshot" and os.path.basename(top["file"]) != "s.qcow2":
        if os.path.exists(os.path.join(d, "s.qcow2")):
            os.unlink(os.path.join(d, "s.qcow2"))   # (left by the kill, never used)
        q.cmd("blockdev-snapshot-sync", {"device": "vda", "format": "qcow2",
                                         "snapshot-file": os.path.join(d, "s.qcow2")})
        return "again"
    if op == "stream" and top.get("backing_file"):
        q.cmd("block-stream", {"device": "vda", "job-id": "j"})
        q.wait("BLOCK_JOB_COMPLETED")
        return "again"
    return "nothing"


def main():
    sock, op, arg = sys.argv[1:4]
    try:
        q = Qmp(sock)
        if op == "finish":
            print("finished %s" % finish(q, arg))
        else:
            print("done %d" % run(q, op, arg)[0])
    except Killed:
        print("killed")
    except (Failed, OSError, KeyError, IndexError) as e:
        print("error %s" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
