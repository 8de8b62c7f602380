#!/usr/bin/python3
# The agent's QMP socket against qemu-storage-daemon 7.2, the same bytes in:
# malformed, truncated, pipelined and split messages, deep nesting, huge
# messages, and the agent's own commands given wrong types, missing and
# unknown arguments.  Both serve the same image under the node name "vda"
# (the agent's disk name), so lookups fail alike.  Reuses qmp-diff.py's
# connection and transcript machinery (run on fresh connections, a probe
# marks the end, versions and timestamps masked).
#
#   agent-qmp-diff.py --agent-socket PATH --image QCOW2 [--qsd PATH] [--dir D] [-v] [CASE...]
#
# The agent must already serve QCOW2 as disk vda on PATH.  Exit status 1
# if a transcript differs.
# SPDX-License-Identifier: GPL-2.0-or-later

import argparse
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

spec = importlib.util.spec_from_file_location(
    'qmp_diff', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'qmp-diff.py'))
qd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(qd)
ex, X = qd.ex, qd.X

CASES = []


def case(name, *steps, **opts):
    CASES.append((name, list(steps), opts))


# negotiation and ids
case('command before qmp_capabilities', ex('query-block', id='1'), raw=[0])
case('unknown command before qmp_capabilities', ex('blockdev-snapshot-sync'), raw=[0])
case('qmp_capabilities twice', ex('qmp_capabilities', id='2'), ex('qmp_capabilities'))
for idv in ['"str"', '-1', '1.5', '{"b": 1, "a": [2, {}]}', '[1, "two"]', 'null', 'false',
            '18446744073709551616', '"\\u00e9\\ud83d\\ude00\\/"', '"\xc3\xa9"']:
    case('id echoed verbatim: %r' % idv, ex('query-block-jobs', id=idv),
         ex('block-dirty-bitmap-add', '{"node": "vda", "name": "b", "x": 1}', idv))

# malformed and truncated JSON: an error each, the connection goes on
for bad in ['{"execute": }', '}', ']]', '{"a":1,}', '[1 2]', '{"execute":"query-block" "id":1}',
            '{1:2}', '\x00', '\xff', '"\\q"', '"\xc0\x80"', '"\\uD800"', 'garbage ', 'tRue ',
            '{"execute": "query-block", "arguments": 1}', '[]', '"x"', '{}', '{"execute": 1}',
            '{"execute": "query-block", "foo": 1}']:
    case('malformed: %r' % bad, X(bad))
case('truncated message swallows the probe', b'{"execute": "query-block", "id"', probe=False)
case('truncated string swallows the probe', b'{"execute": "query-bl', probe=False)
case('stray bytes then a command', X('\xff\x01garbage ,') + ex('query-block-jobs', id='"after"'))

# framing: several messages per write, one message over many writes
case('pipelined in one write',
     ex('query-block-jobs', id='1') + ex('nope', id='2') + b'}' +
     ex('block-dirty-bitmap-add', '{"node": "vda"}', '3') + b'\n\r\n\t ' +
     ex('query-named-block-nodes', '{"flat": "yes"}', '4') + ex('query-block-jobs', id='5'))
case('one message a byte per write',
     ('split', ex('block-dirty-bitmap-add', '{"node": "vda", "name": "b", "persistent": "\xc3\xa9"}',
                  '"split"'), 1))
case('messages three bytes per write',
     ('split', ex('query-block-jobs', id='1') + b' [1, 2] ' + ex('nope', id='2') +
      ex('blockdev-snapshot-sync', '{"device": 1}', '3'), 3))

# nesting and size limits
case('nesting at the limit', b'[' * 1024 + b']' * 1024)
case('nesting past the limit', b'[' * 1025 + b']' * 1025)
case('nesting past the limit in arguments',
     b'{"execute": "block-dirty-bitmap-add", "arguments": ' + b'{"a":' * 1024 + b'1' + b'}' * 1024 + b'}')
case('a message of 128 KiB',
     b'{"execute": "query-block-jobs", "id": "' + b'x' * (128 * 1024) + b'"}')
# (past 1 MiB of tokens or 128 Ki tokens the agent refuses a message, where
# QEMU goes to 64 MiB and 2 Mi, and QEMU takes tens of seconds to read a
# message of 1 MiB: agent-nbd.bats tests the agent's limits on their own)

# the agent's commands: wrong types, missing and unknown arguments
case('blockdev-snapshot-sync arguments',
     ex('blockdev-snapshot-sync'),
     ex('blockdev-snapshot-sync', '{"device": "vda"}'),
     ex('blockdev-snapshot-sync', '{"device": 1, "snapshot-file": "/nonexistent/x"}'),
     ex('blockdev-snapshot-sync', '{"device": "vda", "snapshot-file": ["x"]}'),
     ex('blockdev-snapshot-sync', '{"device": "vda", "snapshot-file": "/nonexistent/x", "mode": 1}'),
     ex('blockdev-snapshot-sync', '{"device": "vda", "snapshot-file": "/nonexistent/x", "mode": "nope"}'),
     ex('blockdev-snapshot-sync', '{"device": "vda", "snapshot-file": "/nonexistent/x", "format": null}'),
     ex('blockdev-snapshot-sync', '{"device": "vda", "snapshot-file": "/nonexistent/x", "foo": 1}'))
case('block-dirty-bitmap-add arguments',
     ex('block-dirty-bitmap-add'),
     ex('block-dirty-bitmap-add', '{"node": "vda"}'),
     ex('block-dirty-bitmap-add', '{"name": "b"}'),
     ex('block-dirty-bitmap-add', '{"node": "vda", "name": 5}'),
     ex('block-dirty-bitmap-add', '{"node": "vda", "name": "b", "persistent": "yes"}'),
     ex('block-dirty-bitmap-add', '{"node": "vda", "name": "b", "disabled": 0}'),
     ex('block-dirty-bitmap-add', '{"node": "vda", "name": "b", "x": 1, "y": 2}'))
case('other bitmap commands',
     ex('block-dirty-bitmap-remove', '{"node": "vda"}'),
     ex('block-dirty-bitmap-clear', '{"node": "vda", "name": []}'),
     ex('block-dirty-bitmap-enable', '{"node": "vda", "name": "b", "z": 1}'),
     ex('block-dirty-bitmap-disable', '{"node": {}, "name": "b"}'),
     ex('block-dirty-bitmap-merge', '{"node": "vda", "target": "b"}'),
     ex('block-dirty-bitmap-merge', '{"node": "vda", "target": "b", "bitmaps": "a"}'))
# a merge source (an alternate: a string or {node, name}) is checked
# before any lookup
case('merge sources',
     ex('block-dirty-bitmap-merge', '{"node": "vda", "target": "b", "bitmaps": [{}]}'),
     ex('block-dirty-bitmap-merge', '{"node": "vda", "target": "b", "bitmaps": [{"node": "vda"}]}'),
     ex('block-dirty-bitmap-merge', '{"node": "nosuch", "target": "b", "bitmaps": ["a", 1]}'),
     ex('block-dirty-bitmap-merge',
        '{"node": "vda", "target": "b", "bitmaps": [{"node": "vda", "name": "a", "z": 1}]}'),
     ex('block-dirty-bitmap-merge', '{"node": "vda", "target": "b", "bitmaps": [{"node": 1, "name": "a"}]}'))
# unknown nodes, worded as QEMU; granularity, a uint32 in QEMU (a string or
# a negative number: "Parameter 'granularity' expects uint64" / "uint32_t")
case('granularity types',
     ex('block-dirty-bitmap-add', '{"node": "vda", "name": "b", "granularity": "64k"}'),
     ex('block-dirty-bitmap-add', '{"node": "vda", "name": "b", "granularity": -1}'))
case('node lookup errors',
     ex('block-dirty-bitmap-add', '{"node": "nosuch", "name": "b"}'),
     ex('blockdev-snapshot-sync', '{"snapshot-file": "/nonexistent/x"}'),
     ex('block-dirty-bitmap-remove', '{"node": "nosuch", "name": "b"}'),
     ex('blockdev-snapshot-sync', '{"device": "nosuch", "snapshot-file": "/nonexistent/x"}'))
case('transaction arguments',
     ex('transaction'),
     ex('transaction', '{"actions": {}}'),
     ex('transaction', '{"actions": [{"data": {}}]}'),
     ex('transaction', '{"actions": [{"type": "block-dirty-bitmap-add"}]}'),
     ex('transaction', '{"actions": [], "foo": 1}'))
# where a bad member of an action (a union on "type") is named, and
# properties' members; the action's members are checked before the
# arguments' unknown members
case('transaction members',
     ex('transaction', '{"actions": [{"type": "nope", "data": {}}]}'),
     ex('transaction', '{"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": 1, "name": "b"}}]}'),
     ex('transaction', '{"actions": [], "properties": {"completion-mode": "x"}}'),
     ex('transaction', '{"actions": [], "properties": {"z": 1}}'),
     ex('transaction', '{"foo": 1, "actions": [{"type": "abort"}]}'),
     ex('transaction', '{"actions": [{"type": "abort", "data": {"x": 1}}]}'),
     ex('transaction', '{"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "vda", '
                       '"name": "b", "granularity": "x"}, "q": 1}]}'))
case('export and query arguments',
     ex('block-export-del'),
     ex('block-export-del', '{"id": 1}'),
     ex('block-export-del', '{"id": "nosuch"}'),
     ex('block-export-del', '{"id": "x", "mode": "nope"}'),
     ex('block-export-add', '{"type": "nbd", "id": "e"}'),
     ex('block-export-add', '{"type": "vhost", "id": "e", "node-name": "vda"}'),
     ex('block-export-add', '{"type": "nbd", "id": "e", "node-name": "vda", "writable": "yes"}'),
     ex('block-export-add', '{"type": "nbd", "id": "e", "node-name": "nosuch"}'),
     ex('query-named-block-nodes', '{"flat": 0}'),
     ex('query-block', '{"x": 1}'),
     ex('query-block-exports', '{"x": 1}'),
     ex('quit', '{"now": true}'))

# several clients at once (qemu-storage-daemon: one per monitor)
case('three clients interleaved', ('on', 0, ex('query-block-jobs', id='"a1"')),
     ('on', 1, ex('nope', id='"b1"')), ('on', 0, b'{"execute": '),
     ('on', 2, ex('block-dirty-bitmap-add', '{"node": "vda", "name": 1}', '"c1"')),
     ('on', 1, ex('query-block-jobs', id='"b2"')), ('on', 0, b'"nope", "id": "a2"}'),
     ('on', 2, b'{"execute": "query-block-jobs", "id": "c2"'), ('on', 2, b'}'), conns=3)
case('one client negotiated, one not', ('on', 0, ex('query-block-jobs')),
     ('on', 1, ex('query-block-jobs')), conns=2, raw=[1])
case('a client gone mid-message, another goes on', ('on', 0, b'{"execute": "qu'), ('close', 0),
     ('on', 1, ex('query-block-jobs', id='"still"')), conns=2)


def start_qsd(qsd, image, d):
    socks = [os.path.join(d, 'qsd%d.sock' % i) for i in range(3)]
    args = [qsd, '--blockdev',
            'driver=file,node-name=vda-file,filename=%s,locking=off' % image,
            '--blockdev', 'driver=qcow2,node-name=vda,file=vda-file,read-only=on']
    for i, s in enumerate(socks):
        args += ['--chardev', 'socket,path=%s,server=on,wait=off,id=c%d' % (s, i),
                 '--monitor', 'chardev=c%d' % i]
    log = open(os.path.join(d, 'qsd.log'), 'w')
    p = subprocess.Popen(args, stdout=log, stderr=log)
    for s in socks:
        qd.wait_socket(s, p)
    return qd.Server('qemu', socks, p)


def send(self, data):
    """as qmp-diff.py's, with room for a server that reads a huge message
    slowly"""
    self.s.settimeout(30)
    self.s.sendall(data)


qd.Conn.send = send


class Running:
    """the agent, started by the caller"""
    def poll(self):
        return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--agent-socket', required=True)
    ap.add_argument('--image', required=True)
    ap.add_argument('--qsd', default=shutil.which('qemu-storage-daemon'))
    ap.add_argument('--dir')
    ap.add_argument('-v', '--verbose', action='store_true')
    ap.add_argument('--skip', action='append', default=[],
                    help='leave out cases whose name contains this')
    ap.add_argument('only', nargs='*')
    args = ap.parse_args()
    with contextlib.ExitStack() as cleanup:
        d = args.dir or cleanup.enter_context(tempfile.TemporaryDirectory(prefix='agent-qmp-diff.'))
        qemu = start_qsd(args.qsd, args.image, d)
        cleanup.callback(lambda p: (p.terminate(), p.wait()), qemu.proc)
        ours = qd.Server('ours', [args.agent_socket] * 3, Running())
        ran, failed = qd.compare(qemu, ours, CASES, args.only, args.skip, args.verbose)
    print('%d cases, %d differ' % (ran, failed))
    return int(failed > 0)


if __name__ == '__main__':
    sys.exit(main())
