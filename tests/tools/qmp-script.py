#!/usr/bin/python3
# Run a QMP script against a server (blockctl agent or qemu-storage-daemon)
# and print what came back, normalised so that two servers doing the same
# thing print the same: one line per reply ("> COMMAND ARGS" then the
# reply), then the events in the order they came (without timestamps).
#
#   qmp-script.py SOCKET [--keep-progress] < SCRIPT
#
# SCRIPT lines:
#   COMMAND [JSON-ARGS]          send it, wait for the reply
#   wait EVENT [KEY=VALUE...]    wait (up to 30 s) for an event whose data
#                                has those members (string values), after
#                                the one the last wait found
#   waitany EVENT [KEY=VALUE...] the same, for an event that came after the
#                                last command was sent, whatever waits
#                                found meanwhile (events whose order is not
#                                defined: two jobs ending)
#   sleep SECONDS
#   run SHELL-COMMAND            run it (e.g. to kill a server meanwhile)
# Members that depend on timing (offset, len, current-progress,
# total-progress, busy) are
# dropped from replies and events unless --keep-progress.
# SPDX-License-Identifier: GPL-2.0-or-later
import json
import socket
import subprocess
import sys
import time

VOLATILE = ("offset", "current-progress", "busy", "len", "total-progress")


def scrub(v, keep):
    if keep:
        return v
    if isinstance(v, dict):
        return {k: scrub(x, keep) for k, x in v.items() if k not in VOLATILE}
    if isinstance(v, list):
        return [scrub(x, keep) for x in v]
    return v


def main():
    keep = "--keep-progress" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--keep-progress"]
    s = socket.socket(socket.AF_UNIX)
    s.connect(args[0])
    s.settimeout(30)
    # read through a binary file and write to the socket: a text file's
    # write drops what it had read ahead (an event that came in one piece
    # with the reply before it would be lost)
    f = s.makefile("rb")
    events = []
    seen = 0        # events already matched by a wait
    sent = 0        # events that came before the last command was sent
    failed = False

    def read():
        line = f.readline()
        if not line:
            raise SystemExit("the server closed the connection")
        m = json.loads(line)
        if "event" in m:
            events.append(m)
            return None
        return m

    def execute(cmd, arguments=None):
        nonlocal sent
        sent = len(events)
        msg = {"execute": cmd}
        if arguments is not None:
            msg["arguments"] = arguments
        s.sendall((json.dumps(msg) + "\n").encode())
        while True:
            r = read()
            if r is not None:
                return r

    read()
    execute("qmp_capabilities")
    for line in sys.stdin:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "sleep":
            time.sleep(float(rest))
        elif word == "run":
            subprocess.run(rest, shell=True, check=False)
        elif word in ("wait", "waitany"):
            name, *conds = rest.split()
            want = dict(c.split("=", 1) for c in conds)
            deadline = time.monotonic() + 30
            found = False
            while not found:
                for i in range(seen if word == "wait" else sent, len(events)):
                    e = events[i]
                    d = e.get("data") or {}
                    if e["event"] == name and all(str(d.get(k)) == v for k, v in want.items()):
                        seen = max(seen, i + 1)
                        found = True
                        break
                if found:
                    break
                if time.monotonic() > deadline:
                    print("! timed out waiting for %s %s" % (name, want))
                    break
                try:
                    read()
                except TimeoutError:
                    # (the socket cannot be read after that: what came is shown)
                    print("! timed out waiting for %s %s" % (name, want))
                    failed = True
                    break
            if failed:
                break
        else:
            arguments = json.loads(rest) if rest else None
            r = execute(word, arguments)
            print("> %s %s" % (word, rest))
            print(json.dumps(scrub(r, keep), sort_keys=True))
    print("events:")
    for e in events:
        print("%s %s" % (e["event"], json.dumps(scrub(e.get("data"), keep), sort_keys=True)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
