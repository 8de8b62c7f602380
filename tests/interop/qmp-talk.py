#!/usr/bin/python3
# Talk QMP on a UNIX socket, for tests: print every line the server sends.
#
#   qmp-talk.py SOCKET [--raw] [--uid N] [--big N] [MESSAGE...]
#
# Reads the greeting, negotiates (unless --raw), sends each MESSAGE (\xNN
# escapes allowed), then --big: a message whose "id" is a string of N
# bytes, then a probe (query-version, id "end") and prints what came back
# up to the probe's answer or the end of the connection ("<EOF>").
# --uid: connect as that user (needs root).
# SPDX-License-Identifier: GPL-2.0-or-later

import argparse
import os
import socket
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('socket')
    ap.add_argument('--raw', action='store_true')
    ap.add_argument('--uid', type=int)
    ap.add_argument('--big', type=int)
    ap.add_argument('messages', nargs='*')
    a = ap.parse_args()
    if a.uid is not None:
        os.setgid(a.uid)
        os.setuid(a.uid)
    s = socket.socket(socket.AF_UNIX)
    s.connect(a.socket)
    s.settimeout(10)
    buf = b''
    out = []

    def line():
        nonlocal buf
        while b'\n' not in buf:
            try:
                d = s.recv(1 << 20)
            except (socket.timeout, ConnectionResetError):
                d = b''
            if not d:
                return None
            buf += d
        l, buf = buf.split(b'\n', 1)
        return l + b'\n'

    g = line()
    if g is None:
        print('<EOF>')
        return 0
    out.append(g)
    if not a.raw:
        s.sendall(b'{"execute": "qmp_capabilities"}')
        out.append(line())
    data = b''.join(m.encode('latin-1').decode('unicode_escape').encode('latin-1')
                    for m in a.messages)
    if a.big:
        data += b'{"execute": "query-version", "id": "' + b'x' * a.big + b'"}'
    data += b'{"execute": "query-version", "id": "end"}'
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass    # the server went away (quit): print what it said
    while True:
        l = line()
        if l is None:
            out.append(b'<EOF>\n')
            break
        out.append(l)
        if b'"id": "end"' in l:
            break
    sys.stdout.buffer.write(b''.join(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
