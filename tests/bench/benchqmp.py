# A small QMP client for the benchmark scripts (snap-gap.py, job-lat.py):
# commands, their answers, and the events that came meanwhile (each with
# the time.monotonic() at which it was read, as 't').
# SPDX-License-Identifier: GPL-2.0-or-later

import json
import socket
import time


class Qmp:
    def __init__(self, path, timeout=30):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.s.settimeout(timeout)
        self.buf = b''
        self.events = []
        self.read()                      # greeting
        self.call('qmp_capabilities')

    def read(self):
        while b'\n' not in self.buf:
            d = self.s.recv(1 << 16)
            if not d:
                raise EOFError('QMP connection closed')
            self.buf += d
        line, self.buf = self.buf.split(b'\n', 1)
        m = json.loads(line)
        if 'event' in m:
            m['t'] = time.monotonic()
            self.events.append(m)
        return m

    def send(self, cmd, args=None):
        msg = {'execute': cmd}
        if args is not None:
            msg['arguments'] = args
        self.s.sendall(json.dumps(msg).encode())

    def answer(self):
        while True:
            m = self.read()
            if 'return' in m or 'error' in m:
                return m

    def call(self, cmd, args=None):
        self.send(cmd, args)
        return self.answer()

    def wait(self, names, timeout=120):
        """The first event (come already or to come) named in NAMES; consumed."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e['event'] in names:
                    del self.events[i]
                    return e
            if time.monotonic() > deadline:
                raise TimeoutError('no %s in %d s' % ('/'.join(names), timeout))
            self.read()
