#!/usr/bin/python3
# Hostile NBD clients against `blockctl agent` (export EXPORT on a UNIX
# socket): each must be disconnected, and nothing else happen.  Prints one
# "ok NAME" or "FAIL NAME" line per check; exit 1 if any failed.
#
#   agent-hostile.py SOCKET EXPORT LIMIT TIMEOUT
#
# LIMIT: how many more clients the agent takes (its limit less those the
# caller holds), TIMEOUT: its handshake timeout (s).
# SPDX-License-Identifier: GPL-2.0-or-later

import collections
import socket
import struct
import sys
import time

NBDMAGIC = b'NBDMAGIC'
IHAVEOPT = 0x49484156454f5054
OPT_REPLY = 0x3e889045565a9
REQUEST = 0x25609513
SIMPLE_REPLY = 0x67446698
OPT_GO = 7
CMD_READ, CMD_WRITE = 0, 1

path, export = sys.argv[1], sys.argv[2].encode()
limit, hs_timeout = int(sys.argv[3]), float(sys.argv[4])
results = []


def report(name, good):
    results.append(good)
    print('%s %s' % ('ok' if good else 'FAIL', name), flush=True)


def dial():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(hs_timeout + 10)
    return s


def take(s, n):
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError('closed after %d of %d bytes' % (len(out), n))
        out += chunk
    return bytes(out)


def hung_up(s, wait=5.0):
    """the server closes (EOF or reset) within @wait seconds"""
    s.settimeout(wait)
    try:
        while s.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    finally:
        s.close()


def newstyle(s):
    hello = take(s, 18)
    assert hello[:8] == NBDMAGIC and struct.unpack('>Q', hello[8:16])[0] == IHAVEOPT, hello
    s.sendall(struct.pack('>I', 1))         # NBD_FLAG_C_FIXED_NEWSTYLE


def opt_go(s):
    """NBD_OPT_GO for the export; returns the export's size"""
    payload = struct.pack('>I', len(export)) + export + struct.pack('>H', 0)
    s.sendall(struct.pack('>QII', IHAVEOPT, OPT_GO, len(payload)) + payload)
    size = None
    while True:
        magic, _, rtype, rlen = struct.unpack('>QIII', take(s, 20))
        assert magic == OPT_REPLY
        body = take(s, rlen)
        if rtype == 3 and struct.unpack('>H', body[:2])[0] == 0:    # NBD_INFO_EXPORT
            size = struct.unpack('>Q', body[2:10])[0]
        if rtype != 3:
            assert rtype == 1, 'NBD_OPT_GO failed: %#x' % rtype
            return size


def transmitting():
    s = dial()
    newstyle(s)
    return s, opt_go(s)


def request(s, cmd, handle, offset, length, flags=0):
    s.sendall(struct.pack('>IHHQQI', REQUEST, flags, cmd, handle, offset, length))


# --- the handshake ---------------------------------------------------------
s = dial()
s.sendall(b'\x00' * 4 + b'GET / HTTP/1.0\r\n\r\n')
report('an HTTP request instead of the client flags: disconnected', hung_up(s))

s = dial()
newstyle(s)
s.sendall(b'NOTMAGIC' + struct.pack('>II', OPT_GO, 0))
report('a bad option magic: disconnected', hung_up(s))

s = dial()
newstyle(s)
s.sendall(struct.pack('>QI', IHAVEOPT, OPT_GO) + b'\x00')
s.shutdown(socket.SHUT_WR)
report('an option header cut short, then EOF: disconnected', hung_up(s))

s = dial()
newstyle(s)
s.sendall(struct.pack('>QII', IHAVEOPT, OPT_GO, 64) + b'\x00' * 10)
s.shutdown(socket.SHUT_WR)
report('an option payload cut short, then EOF: disconnected', hung_up(s))

s = dial()
newstyle(s)
s.sendall(struct.pack('>QII', IHAVEOPT, OPT_GO, 0x7fffffff))
report('an option of 2 GiB: disconnected, unread', hung_up(s))

s = dial()
newstyle(s)
payload = struct.pack('>I', 1 << 30) + export + b'\x00\x00'
s.sendall(struct.pack('>QII', IHAVEOPT, OPT_GO, len(payload)) + payload)
try:
    magic, _, rtype, _ = struct.unpack('>QIII', take(s, 20))
    report('a name length past the option: an error reply (%#x)' % rtype,
           magic == OPT_REPLY and rtype & 0x80000000)
except (EOFError, ConnectionResetError):
    report('a name length past the option: disconnected', True)
s.close()

# --- transmission ----------------------------------------------------------
s, size = transmitting()
report('a sane client gets the export (%s bytes)' % size, bool(size))
s.sendall(struct.pack('>IHH', REQUEST, 0, CMD_READ) + b'\x00' * 5)
s.shutdown(socket.SHUT_WR)
report('a request header cut short, then EOF: disconnected', hung_up(s))

s, size = transmitting()
s.sendall(struct.pack('>IHHQQI', 0xdeadbeef, 0, CMD_READ, 1, 0, 512))
report('a request with a bad magic: disconnected', hung_up(s))

s, size = transmitting()
request(s, CMD_WRITE, 2, 0, 1 << 20)
s.sendall(b'\xee' * 1000)
s.shutdown(socket.SHUT_WR)
report('a write whose payload is cut short, then EOF: disconnected', hung_up(s))

s, size = transmitting()
request(s, CMD_WRITE, 3, 0, (32 << 20) + 512)
try:
    s.sendall(b'\xee' * 65536)
except (BrokenPipeError, ConnectionResetError):
    pass        # gone already
report('a write past the 32 MiB payload cap: disconnected, its payload unread', hung_up(s))

s, size = transmitting()
request(s, CMD_READ, 4, 0, (32 << 20) + 512)
magic, err, handle = struct.unpack('>IIQ', take(s, 16))
report('a read past the 32 MiB cap: EINVAL (%d), the connection kept' % err,
       magic == SIMPLE_REPLY and err == 22 and handle == 4)
request(s, CMD_READ, 5, size - 512, 512)
magic, err, handle = struct.unpack('>IIQ', take(s, 16))
report('then a read of the last sector works', err == 0 and handle == 5 and len(take(s, 512)) == 512)
request(s, 77, 6, 0, 0)
magic, err, handle = struct.unpack('>IIQ', take(s, 16))
report('an unknown command: EINVAL (%d)' % err, err == 22 and handle == 6)
s.close()

# --- numbers and time -------------------------------------------------------
# (the connections above are closed: give the agent a moment to reap them,
# or the last of them may still count against the limit)
time.sleep(1)
conns = []
for _ in range(limit + 3):
    try:
        conns.append(dial())
    except OSError:
        break


def greeting(c):
    """what a new connection gets: the greeting, a hang-up, or silence"""
    c.settimeout(3)
    try:
        return 'greeted' if take(c, 18)[:8] == NBDMAGIC else 'garbage'
    except (EOFError, ConnectionResetError):
        return 'refused'
    except socket.timeout:
        return 'silent'


got = collections.Counter(greeting(c) for c in conns)
greeted, refused = got['greeted'], got['refused']
report('beyond %d more clients, refused: %d greeted, %d refused' % (limit, greeted, refused),
       greeted == limit and refused == 3)
t0 = time.time()
idle = [hung_up(c, hs_timeout + 5) for c in conns]
took = time.time() - t0
report('clients idle in the handshake dropped within the timeout (%.1f s)' % took,
       all(idle) and took < hs_timeout + 3)
s, size = transmitting()
request(s, CMD_READ, 7, 0, 4096)
magic, err, handle = struct.unpack('>IIQ', take(s, 16))
report('then a new client is served', err == 0 and len(take(s, 4096)) == 4096)
s.close()
sys.exit(0 if all(results) else 1)
