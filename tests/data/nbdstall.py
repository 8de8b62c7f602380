#!/usr/bin/env python3
# nbdstall.py - an NBD proxy that stops forwarding at a chosen request
# SPDX-License-Identifier: GPL-2.0-or-later
#
# usage: nbdstall.py LISTEN_SOCKET SERVER_SOCKET TYPE
#
# Serves clients on the UNIX socket LISTEN_SOCKET and passes their bytes
# to and from the NBD server on SERVER_SOCKET (one server connection per
# client), following the client's side of the protocol (newstyle options,
# then 28-byte requests).  A client's first request of command type TYPE
# (1 write, 3 flush, 7 block status, ...) and everything after it are
# never forwarded: the server looks alive but never answers.  It runs
# until killed; "ready" is printed once listening.
import os
import socket
import struct
import sys
import threading
import time

listen_path, server_path, stall_type = sys.argv[1], sys.argv[2], int(sys.argv[3])


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def server_to_client(srv, cli):
    try:
        while True:
            data = srv.recv(65536)
            if not data:
                break
            cli.sendall(data)
    except OSError:
        pass


def client_to_server(cli, srv):
    try:
        srv.sendall(read_exact(cli, 4))          # client flags
        while True:                              # options
            hdr = read_exact(cli, 16)
            _, opt, length = struct.unpack(">QII", hdr)
            srv.sendall(hdr + read_exact(cli, length))
            if opt in (1, 7):                    # EXPORT_NAME, GO: transmission
                break
            if opt == 2:                         # ABORT
                return
        while True:                              # requests
            hdr = read_exact(cli, 28)
            _, _, typ, _, _, length = struct.unpack(">IHHQQI", hdr)
            payload = read_exact(cli, length) if typ == 1 else b""
            if typ == stall_type:
                while True:
                    time.sleep(3600)
            srv.sendall(hdr + payload)
    except (OSError, EOFError):
        pass


try:
    os.unlink(listen_path)
except FileNotFoundError:
    pass
lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
lsock.bind(listen_path)
lsock.listen(4)
print("ready", flush=True)
while True:
    cli, _ = lsock.accept()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.connect(server_path)
    threading.Thread(target=server_to_client, args=(srv, cli), daemon=True).start()
    threading.Thread(target=client_to_server, args=(cli, srv), daemon=True).start()
