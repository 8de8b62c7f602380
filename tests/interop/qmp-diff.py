#!/usr/bin/python3
# Send the same bytes to qemu-storage-daemon 7.2 and to blockctl's QMP
# server (tests/tools/qmp-host) and compare what comes back, byte for byte.
#
#   qmp-diff.py --qmp-host PATH [--qsd PATH] [--dir DIR] [-v] [CASE...]
#
# Every case runs on fresh connections: each gets the greeting, negotiates
# (unless the case says not to), sends its bytes, and ends with a probe
# command (query-version with a unique id) whose answer marks the end of
# the transcript.  Before comparing, only what may differ is masked: the
# version numbers and package, the event timestamps (checked to be now),
# QEMU's "oob" capability (we offer none), and query-commands' list (its
# shape is checked).  QEMU serves one client per monitor, so cases with
# several clients use several monitors of the daemon and one socket of
# ours.  Exit status 1 if a transcript differs.
# SPDX-License-Identifier: GPL-2.0-or-later

import argparse
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

TIMEOUT = 5.0


def X(s):
    """bytes from a str with \\xNN escapes kept as bytes"""
    return s.encode('latin-1')


# --- cases ---------------------------------------------------------------
# A case: name, steps, options.  A step is bytes (sent on connection 0) or
# a tuple: ('on', i, bytes), ('split', bytes, n) (n bytes per write, with a
# pause), ('each', qemu_bytes, ours_bytes), ('close', i), ('sleep', s).
# Options: conns (default 1), raw (connections that do not negotiate),
# probe (default True; False: read until quiet), events_only (compare the
# first event of each connection).

def ex(cmd, args=None, id=None):
    m = '{"execute": "%s"' % cmd
    if args is not None:
        m += ', "arguments": ' + args
    if id is not None:
        m += ', "id": ' + id
    return X(m + '}')


CASES = []


def case(name, *steps, **opts):
    CASES.append((name, list(steps), opts))


# greeting and negotiation
case('greeting only')
case('command before qmp_capabilities', ex('query-version', id='1'), raw=[0])
case('unknown command before qmp_capabilities', ex('nope'), raw=[0])
case('quit with bad arguments before qmp_capabilities', ex('quit', '{"a": 1}'), raw=[0])
case('bad member before qmp_capabilities', b'{"foo": 1}', raw=[0])
case('qmp_capabilities with bad arguments before negotiation',
     ex('qmp_capabilities', '{"x": 1}'), ex('qmp_capabilities', '{"enable": "oob"}'),
     ex('qmp_capabilities', '{"enable": [1]}'), ex('qmp_capabilities', '{"enable": ["foo"]}'),
     raw=[0])
case('qmp_capabilities with an empty enable list', ex('qmp_capabilities', '{"enable": []}', '"a"'),
     raw=[0])
case('qmp_capabilities twice', ex('qmp_capabilities', id='2'), ex('qmp_capabilities'))
case('qmp_capabilities again with bad arguments', ex('qmp_capabilities', '{"x": 1}'))

# commands and ids
case('unknown command', ex('nope'), ex('nope', id='"x"'))
for i, idv in enumerate(['"str"', '0', '-1', '1.5', '1e100', '{"b": 1, "a": [2, {}], "c": {"d": null}}',
                         '[1, "two", [3], {"four": 4}]', 'null', 'true', 'false', '""',
                         '9223372036854775807', '9223372036854775808', '18446744073709551616',
                         '-9223372036854775809', '0.1', '-0.0', '1e400', '1E-400', '[]', '{}',
                         '"\\u00e9\\u0001\\ud83d\\ude00\\/\\"\\\\\\b\\f\\n\\r\\t"',
                         "'single \\' quoted'", '"\xc3\xa9\x7f"', '"\xc0\x80"',
                         '{"d": 1, "e": 2, "a": 3, "f": 4, "b": 5, "g": 6, "c": 7, "h": 8}',
                         '{"minor": 1, "micro": 2, "major": 3}', '{"micro": 1, "minor": 2}']):
    case('id echoed: %r' % idv, ex('query-block-jobs', id=idv))
case('id on errors', ex('nope', id='[1, {"a": null}]'), b'{"id": 5}', b'{"id": 6, "foo": 1}',
     ex('query-version', '{"a": 1}', '7'))
case('missing execute', b'{}', b'{"arguments": {}}', b'{"id": "x"}')
case('execute not a string', b'{"execute": 1}', b'{"execute": null}', b'{"execute": []}',
     b'{"execute": {}}', b'{"execute": true}')
case('arguments not an object', b'{"execute": "query-version", "arguments": 1}',
     b'{"execute": "query-version", "arguments": []}', b'{"execute": "query-version", "arguments": null}')
case('unknown top-level members', b'{"execute": "query-version", "foo": 1}',
     b'{"execute": "query-version", "control": {}}', b'{"foo": 1, "bar": 2}',
     b'{"foo": 1, "execute": 1}', b'{"execute": 1, "arguments": 1}', b'{"arguments": 1}')
case('exec-oob without oob', b'{"exec-oob": "query-version"}',
     b'{"execute": "query-version", "exec-oob": "query-version", "id": 1}')
case('top-level values that are not objects', b'[]', b'"x"', b'1 ', b'1.5 ', b'-0 ', b'null ',
     b'true ', b'false ', b'[1, 2]')

# malformed JSON
for i, bad in enumerate([
        '{"execute": }', '}', ']', '}}', ']]', '[}', '{]', '{"a": ]}', '{,}', '[,]', '[1,]',
        '[1,,2]', '{"a":1,}', '{"execute":"x" "id":1}', '[1 2]', '[1:2]', '{"a":1]',
        '{"a":1:2}', '{"a"}', '{"a",1}', '{"a" 1}', '{1:2}', '{[1]:2}', '{{"a":1}:2}',
        '{"a":1,"a":2}', '{"a":1,"a":}', '{"a": tru}', '{tru: 1}', '[nul]',
        '\x01', '\x00', '\x0c', '\x7f', '\x80', '\xc3\xa9', '\xfe', '\xff', '.5 ', '+1 ', '%',
        '{"a":%}', '01 ', '-x ', '1. ', '1e ', '1e+ ', '-{}', 'garbage ', 'tRue ', 'true1 ',
        'true_ ', 'abc{"execute":"x"}', '-x abc {} ', '-x\n"a"', '-x\r"a"', '-x\t"a"',
        '-x abc , "a"', '-x abc : "a"', '-x ab"c" "a"', '-x\x7f"a"', '-x\xfd"a"', '-x\xfe"a"',
        '-x\x00"a"', '"\x01"', '"a\x00"', '"\\q"', '"\\\x01"', '"\\\x7f"', '"\\\xfe"', '"\xff"',
        '"\xc3("', '"a\xc3"', '"\xed\xa0\x80"', '"\xc0\x80"', '"\xc1\xbf"', '"\xf4\x90\x80\x80"',
        '"\xef\xbf\xbf"', '"\xef\xb7\x90"', '"\xf0\x9f\xbf\xbe"', '"\xf8\x88\x80\x80\x80"',
        '"\xfd"', '"\xc3(\x01', '"\xe2\x82(\x01', '"\xed\xa0\x80\x01', '"\xc0\x80\x01',
        '"\xc1\xbf\x01', '"\xf4\x90\x80\x80\x01', '"\xf8\x88\x80\x80\x80\x01',
        '"\xfc\x84\x80\x80\x80\x80\x01', '"\xfd\x01', '"\\u"', '"\\u12"', '"\\u12x"', '"\\u12xyzw"',
        '"\\uDC00"', '"\\uD800"', '"\\uD800x"', '"\\uD800\\u0041"', '"\\uD800\\uDBFF"',
        '"\\uD83F\\uDFFF"', '"\\uFFFF"', '"\\uFFFE"', '"\\uFDD0"', '"\\uFDEF"', '"\\uFDF0"',
        '"\\u0000"', "'\\u00e9'", '{"execute": "query-version", "id": "\\ud83d\\ude00"}']):
    case('malformed %d: %r' % (i, bad), X(bad))
case('open brace swallows the probe', b'{', probe=False)
case('open bracket swallows the probe', b'[[', probe=False)
case('unterminated string swallows the probe', b'"abc', probe=False)
case('stray bytes then a command', X('\xff\x01garbage ,') + ex('query-block-jobs', id='"after"'))

# framing
case('pipelined messages in one write',
     ex('query-block-jobs', id='1') + ex('nope', id='2') + b'}' + ex('query-version', id='3') +
     b'\n\r\n\t ' + ex('x', id='4'))
case('one message, one byte per write', ('split', ex('query-block-jobs', '{}', '"split"'), 1))
case('several messages, three bytes per write',
     ('split', ex('query-block-jobs', id='1') + b' [1, 2] ' + ex('nope', id='2'), 3))
case('a string split inside its UTF-8 and escapes',
     ('split', X('{"execute": "nope\xc3\xa9\\u00e9\\ud83d\\ude00", "id": "\\u0041"}'), 1))
case('nesting at the limit', b'[' * 1024 + b']' * 1024)
case('nesting past the limit', b'[' * 1025 + b']' * 1025)
case('nesting past the limit in an object',
     b'{"execute": "x", "id": ' + b'[' * 1024 + b']' * 1024 + b'}')
case('nesting past the limit with braces', b'{"a":' * 1024 + b'1' + b'}' * 1024)

# arguments
case('missing argument', ex('block-job-set-speed'), ex('block-job-set-speed', '{"speed": 1}'),
     ex('block-job-set-speed', '{"foo": 1}'), ex('qom-get', '{"path": "/x"}'))
case('wrong argument types',
     ex('block-job-set-speed', '{"device": 1, "speed": "x"}'),
     ex('block-job-set-speed', '{"device": null, "speed": 1}'),
     ex('block-job-set-speed', '{"device": "a", "speed": "1"}'),
     ex('block-job-set-speed', '{"device": "a", "speed": 1.5}'),
     ex('block-job-set-speed', '{"device": "a", "speed": {}}'),
     ex('block-job-set-speed', '{"device": "a", "speed": null}'),
     ex('block-job-set-speed', '{"device": "a", "speed": 9223372036854775808}'),
     ex('block-job-cancel', '{"device": "a", "force": 1}'),
     ex('block-job-cancel', '{"device": "a", "force": "true"}'),
     ex('query-named-block-nodes', '{"flat": 0}'),
     ex('nbd-server-start', '{"addr": []}'),
     ex('nbd-server-start', '{"addr": "unix"}'))
case('unsigned arguments',
     ex('block-dirty-bitmap-add', '{"node": "x", "name": "y", "granularity": -1}'),
     ex('block-dirty-bitmap-add', '{"node": "x", "name": "y", "granularity": 4294967296}'),
     ex('block-dirty-bitmap-add', '{"node": "x", "name": "y", "granularity": 18446744073709551615}'),
     ex('block-dirty-bitmap-add', '{"node": "x", "name": "y", "granularity": 1e3}'),
     ex('block-dirty-bitmap-add', '{"node": "x", "name": "y", "granularity": "1"}'),
     ex('block-dirty-bitmap-add', '{"node": "x", "name": "y", "granularity": null}'),
     ex('block-dirty-bitmap-add', '{"node": "x", "name": "y", "granularity": true}'),
     ex('block-dirty-bitmap-add', '{"node": "x", "name": "y", "granularity": 65536}'))
case('unexpected arguments',
     ex('block-job-set-speed', '{"device": "a", "speed": 1, "foo": 1, "bar": 2}'),
     ex('block-job-set-speed', '{"device": "a", "speed": 1, "d": 1, "e": 2, "a": 3}'),
     ex('query-version', '{"a": 1}'), ex('query-commands', '{"x": null}'),
     ex('quit', '{"now": true}'), ex('query-block-jobs', '{}'))
case('enum values', ex('block-export-del', '{"id": "x", "mode": "nope"}'),
     ex('block-export-del', '{"id": "x", "mode": 1}'), ex('block-export-del', '{"id": "x", "mode": null}'),
     ex('block-export-del', '{"id": "x", "mode": "Safe"}'), ex('block-export-del', '{"id": "x", "mode": "hard"}'))
case('nested arguments', ex('nbd-server-start', '{"addr": {"type": "unix"}}'),
     ex('nbd-server-start', '{"addr": {"type": "bad"}}'),
     ex('nbd-server-start', '{"addr": {"type": 1}}'),
     ex('nbd-server-start', '{"addr": {}}'),
     ex('nbd-server-start', '{"addr": {"type": "unix", "data": 1}}'),
     ex('nbd-server-start', '{"addr": {"type": "unix", "data": {"path": "/n/x"}}, "max-connections": -1}'),
     ex('nbd-server-start', '{"addr": {"type": "unix", "data": {"path": "/n/x"}}, "max-connections": "1"}'),
     ex('nbd-server-start', '{"addr": {"type": "unix", "data": {"path": "/n/x"}}, "foo": 1, "bar": 2}'))
# which unknown argument is named, out of several: QEMU's GLib hash table
rnd = random.Random(7)
for k in [2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 23, 40, 70]:
    for rep in range(4):
        names = set()
        while len(names) < k:
            names.add(''.join(rnd.choice(list('abcdefghijklmnopqrstuvwxyz-_0123456789') +
                                         ['\xc3\xa9'])  # signed chars in g_str_hash
                              for _ in range(rnd.randint(1, 12))))
        members = ['"%s": %d' % (n, i) for i, n in enumerate(sorted(names))]
        members += ['"device": "j"', '"speed": 1']
        if rnd.random() < 0.5:
            members.append('"force": true')
        rnd.shuffle(members)
        cmd = rnd.choice(['block-job-set-speed', 'block-job-cancel'])
        case('%d unknown arguments (%d)' % (k, rep), ex(cmd, '{%s}' % ', '.join(members)))
case('handler errors keep their class', ex('qom-get', '{"path": "/x", "property": "y"}', '"z"'),
     ex('block-job-cancel', '{"device": "j"}'), ex('block-export-del', '{"id": "e"}'),
     ex('block-dirty-bitmap-add', '{"node": "n", "name": "b"}'))
case('commands that succeed', ex('query-block-jobs', id='1'), ex('query-named-block-nodes', '{"flat": true}'))
case('query-version', ex('query-version'), ex('query-version', '{}', '{"x": 1}'))
case('query-commands', ex('query-commands', id='"c"'))

# several clients (QEMU: one per monitor, hence several monitors)
case('two clients interleaved', ('on', 0, ex('query-version', id='"a1"')),
     ('on', 1, ex('nope', id='"b1"')), ('on', 0, b'{"execute": '),
     ('on', 1, ex('query-block-jobs', id='"b2"')), ('on', 0, b'"nope", "id": "a2"}'), conns=2)
case('one client negotiated, one not', ('on', 0, ex('query-block-jobs')),
     ('on', 1, ex('query-block-jobs')), conns=2, raw=[1])
case('a client that disconnects mid-message', ('on', 0, b'{"execute": "qu'), ('close', 0),
     ('on', 1, ex('query-block-jobs', id='"still"')), conns=2)
case('a client that disconnects with replies pending', ('on', 0, ex('query-commands') * 20),
     ('close', 0), ('on', 1, ex('query-block-jobs', id='"still"')), conns=2)

# events: to every negotiated client, not to one still negotiating
case('events', ('each', None, None), conns=3, raw=[1], events_only=True)

# last: the servers go away
case('quit', ex('quit', id='"bye"'), probe=False)


# --- running ---------------------------------------------------------------

class Server:
    def __init__(self, name, socks, proc):
        self.name, self.socks, self.proc = name, socks, proc


def wait_socket(path, proc):
    for _ in range(200):
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            sys.exit('%s exited with %d' % (proc.args[0], proc.returncode))
        time.sleep(0.02)
    sys.exit('%s did not create %s' % (proc.args[0], path))


def start(args, d):
    qsd_socks = [os.path.join(d, 'qsd%d.sock' % i) for i in range(3)]
    qargs = [args.qsd]
    for i, s in enumerate(qsd_socks):
        qargs += ['--chardev', 'socket,path=%s,server=on,wait=off,id=c%d' % (s, i),
                  '--monitor', 'chardev=c%d' % i]
    qlog = open(os.path.join(d, 'qsd.log'), 'w')
    qsd = subprocess.Popen(qargs, stdout=qlog, stderr=qlog)
    ours_sock = os.path.join(d, 'ours.sock')
    hlog = open(os.path.join(d, 'qmp-host.log'), 'w')
    host = subprocess.Popen([args.qmp_host, '--socket', ours_sock], stdout=hlog, stderr=hlog)
    for s in qsd_socks:
        wait_socket(s, qsd)
    wait_socket(ours_sock, host)
    return Server('qemu', qsd_socks, qsd), Server('ours', [ours_sock] * 3, host)


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = b''
        self.lines = []
        self.eof = False

    def read_some(self, timeout):
        self.s.settimeout(timeout)
        try:
            d = self.s.recv(1 << 20)
        except socket.timeout:
            return False
        except ConnectionResetError:
            d = b''
        if not d:
            self.eof = True
            return False
        self.buf += d
        while b'\n' in self.buf:
            line, self.buf = self.buf.split(b'\n', 1)
            self.lines.append(line + b'\n')
        return True

    def read_line(self):
        n = len(self.lines)
        deadline = time.time() + TIMEOUT
        while len(self.lines) == n and not self.eof and time.time() < deadline:
            self.read_some(deadline - time.time())
        return self.lines[n] if len(self.lines) > n else None

    def read_until(self, marker):
        deadline = time.time() + TIMEOUT
        while not any(marker in l for l in self.lines) and not self.eof:
            if time.time() > deadline:
                self.lines.append(b'<TIMEOUT>\n')
                return
            self.read_some(deadline - time.time())

    def read_quiet(self, quiet=0.3):
        while not self.eof and self.read_some(quiet):
            pass

    def send(self, data):
        self.s.sendall(data)

    def transcript(self):
        t = b''.join(self.lines)
        if self.buf:
            t += self.buf + b'<NO NEWLINE>\n'
        if self.eof:
            t += b'<EOF>\n'
        return t


def event_steps(server, n):
    if server.name == 'qemu':
        return [ex('blockdev-add', '{"driver": "null-co", "node-name": "n%d"}' % n),
                ex('block-stream', '{"device": "n%d", "job-id": "j%d"}' % (n, n))]
    return [ex('x-event', '{"name": "JOB_STATUS_CHANGE", "data": {"id": "j%d", "status": "created"}}' % n)]


def run_case(server, n, steps, opts):
    conns = []
    for i in range(opts.get('conns', 1)):
        c = Conn(server.socks[i])
        c.read_line()       # the greeting
        if i not in opts.get('raw', []):
            c.send(ex('qmp_capabilities'))
            c.read_line()
        conns.append(c)
    # transcripts start after negotiation (the greeting is kept)
    for c in conns:
        c.lines = c.lines[:1]
    for st in steps:
        if isinstance(st, bytes):
            conns[0].send(st)
        elif st[0] == 'on':
            conns[st[1]].send(st[2])
        elif st[0] == 'split':
            data, k = st[1], st[2]
            for j in range(0, len(data), k):
                conns[0].send(data[j:j + k])
                time.sleep(0.002)
        elif st[0] == 'each':
            for m in event_steps(server, n):
                conns[0].send(m)
                time.sleep(0.05)
        elif st[0] == 'close':
            conns[st[1]].s.close()
            conns[st[1]].closed = True
        elif st[0] == 'sleep':
            time.sleep(st[1])
    out = []
    for i, c in enumerate(conns):
        if getattr(c, 'closed', False):
            out.append(b'<closed>\n')
            continue
        if opts.get('probe', True):
            marker = ('"probe-%d-%d"' % (n, i)).encode()
            c.send(ex('query-version', id=marker.decode()))
            c.read_until(marker)
        else:
            c.read_quiet()
        out.append(c.transcript())
        c.s.close()
    return out


VERSION = re.compile(rb'\{"qemu": \{"micro": \d+, "minor": \d+, "major": \d+\}, "package": "[^"]*"\}')
STAMP = re.compile(rb'"timestamp": \{"seconds": (\d+), "microseconds": (\d+)\}')
COMMANDS = re.compile(rb'\{"return": \[(\{"name": "[^"]+"\}(, \{"name": "[^"]+"\})*)\]')


def normalise(t, opts):
    t = VERSION.sub(b'<VERSION>', t)
    t = t.replace(b'"capabilities": ["oob"]', b'"capabilities": []')

    def stamp(m):
        s, us = int(m.group(1)), int(m.group(2))
        ok = abs(s - time.time()) < 120 and us < 1000000
        return b'"timestamp": {"seconds": <S>, "microseconds": <US>}' if ok else m.group(0)
    t = STAMP.sub(stamp, t)
    t = COMMANDS.sub(b'{"return": [<COMMANDS>]', t)
    if opts.get('events_only'):
        lines = t.splitlines(keepends=True)
        events = [l for l in lines if l.startswith(b'{"timestamp"')]
        t = lines[0] + (events[0] if events else b'<NO EVENT>\n')
    return t


def compare(qemu, ours, cases, only, skip, verbose):
    """run @cases on both servers (those named with a string of @only, if
    any, and none of @skip); print the differences; (cases run, differing)"""
    failed = ran = 0
    for n, (name, steps, opts) in enumerate(cases):
        if only and not any(o in name for o in only):
            continue
        if any(o in name for o in skip):
            continue
        ran += 1
        tq = [normalise(t, opts) for t in run_case(qemu, n, steps, opts)]
        to = [normalise(t, opts) for t in run_case(ours, n, steps, opts)]
        if tq != to:
            failed += 1
            print('DIFF %s' % name)
            for i, (a, b) in enumerate(zip(tq, to)):
                if a != b:
                    print('  client %d, qemu-storage-daemon:\n%s  ours:\n%s' %
                          (i, indent(a), indent(b)))
        elif verbose:
            print('same %s' % name)
            for t in tq:
                print(indent(t), end='')
    return ran, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--qmp-host', required=True)
    ap.add_argument('--qsd', default=shutil.which('qemu-storage-daemon'))
    ap.add_argument('--dir')
    ap.add_argument('-v', '--verbose', action='store_true')
    ap.add_argument('only', nargs='*', help='run only cases whose name contains one of these')
    args = ap.parse_args()
    d = args.dir or tempfile.mkdtemp(prefix='qmp-diff.')
    qemu, ours = start(args, d)
    try:
        ran, failed = compare(qemu, ours, CASES, args.only, [], args.verbose)
    finally:
        for s in (qemu, ours):
            if s.proc.poll() is None:
                s.proc.terminate()
            s.proc.wait()
        if not args.dir:
            shutil.rmtree(d, ignore_errors=True)
    print('%d cases, %d differ' % (ran, failed))
    return 1 if failed else 0


def indent(t):
    t = t if len(t) < 3000 else t[:1500] + b'\n[...]\n' + t[-1500:]
    return ''.join('    %r\n' % l for l in t.splitlines(keepends=True))


if __name__ == '__main__':
    sys.exit(main())
