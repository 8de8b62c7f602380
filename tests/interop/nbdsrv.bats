#!/usr/bin/env bats
# The NBD server (lib/nbdsrv, served by tests/tools/nbd-host until `blockctl
# agent` exists) against real peers: qemu-io, qemu-img, nbdinfo, nbdcopy,
# libnbd's python bindings, and qemu-nbd as the oracle for block status.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

NBD_HOST=${NBD_HOST:-$TESTS_DIR/../${BUILD:-build}/tests/tools/nbd-host}
PY=/usr/bin/python3

setup_file() {
    requires_qemu
    requires_cmd qemu-nbd nbdinfo nbdcopy
    [ -x "$NBD_HOST" ] || skip "no $NBD_HOST (make test-tools)"
    setup_chains qcow2
}

setup() {
    requires_qemu
    requires_cmd qemu-nbd nbdinfo nbdcopy
    [ -x "$NBD_HOST" ] || skip "no $NBD_HOST (make test-tools)"
    "$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd is not installed"
    cd "$BATS_TEST_TMPDIR" || return 1
}

teardown() {
    copy_teardown
}

# host_start NAME NBD-HOST-ARGS...: nbd-host on a UNIX socket, until it
# says "ready"; sets HOST_SOCK, HOST_URI (export "disk"), HOST_PID, HOST_LOG
host_start() {
    local name=$1 n=200
    shift
    HOST_SOCK=$(sock_path "$name")
    HOST_LOG=$BATS_TEST_TMPDIR/$name.log
    "$NBD_HOST" --socket "$HOST_SOCK" "$@" >"$BATS_TEST_TMPDIR/$name.out" 2>"$HOST_LOG" 3>&- &
    HOST_PID=$!
    echo "$HOST_PID" >>"$BATS_TEST_TMPDIR/.bgpids"
    while ! grep -qx ready "$BATS_TEST_TMPDIR/$name.out" 2>/dev/null; do
        kill -0 "$HOST_PID" 2>/dev/null || { fail "nbd-host $* died: $(cat "$HOST_LOG")"; return 1; }
        [ $n -gt 0 ] || { fail "nbd-host $* is not ready"; return 1; }
        sleep 0.05
        n=$((n - 1))
    done
    HOST_URI="nbd+unix:///disk?socket=$HOST_SOCK"
}

# host_stop: SIGTERM; it must exit 0 and remove its socket
host_stop() {
    local rc=0
    kill -TERM "$HOST_PID"
    wait "$HOST_PID" || rc=$?
    [ "$rc" -eq 0 ] || { fail "nbd-host exited $rc: $(cat "$HOST_LOG")"; return 1; }
    [ ! -e "$HOST_SOCK" ] || { fail "nbd-host left its socket behind"; return 1; }
    if grep -qiE 'addresssanitizer|runtime error|threadsanitizer' "$HOST_LOG"; then
        fail "sanitizer report: $(cat "$HOST_LOG")"
        return 1
    fi
}

# qemu_nbd NAME ARGS...: qemu-nbd (persistent) as the oracle; sets QNBD_URI
qemu_nbd() {
    local name=$1
    shift
    nbd_serve "$name" -t -x disk "$@" || return 1
    QNBD_URI="nbd+unix:///disk?socket=$NBD_SOCK"
}

@test "qemu-io writes, zeroes, discards and reads round trip (qemu-img compare)" {
    qemu-img create -q -f raw d.raw 16M
    QIO_FMT=raw qio d.raw 'write -P 0x11 0 4M' 'write -P 0x12 9M 3M'
    cp d.raw ref.raw
    host_start h --format raw d.raw
    local cmds=('write -P 0x21 100k 300k' 'write -P 0x22 4M 1M' 'write -z 1M 512k'
        'write -z -u 10M 1M' 'discard 2M 1M' 'write -P 0x23 15M 1M' 'write -P 0x24 5000 3000'
        'flush')
    QIO_FMT=raw qio "$HOST_URI" "${cmds[@]}"
    QIO_FMT=raw qio ref.raw "${cmds[@]}"
    # reads through the export see what the reference holds
    QIO_FMT=raw qio "$HOST_URI" 'read -P 0x21 100k 300k' 'read -P 0 1M 512k' \
        'read -P 0 2M 1M' 'read -P 0x23 15M 1M'
    qemu_same -f raw -F raw "$HOST_URI" ref.raw
    host_stop
    qemu_same -f raw -F raw d.raw ref.raw
}

@test "block status of a qcow2 chain: qemu-img map and nbdinfo --map agree with qemu-nbd" {
    use_chain qcow2
    # a longer overlay: what lies past the end of its backing chain
    mkq long.qcow2 40M "backing_file=c/top.qcow2,backing_fmt=qcow2"
    qio long.qcow2 'write -P 0x51 33M 1M' 'write -z 36M 1M' 'write -P 0x52 1M 64k'
    host_start h --read-only --format qcow2 long.qcow2
    qemu_nbd q -r -A -f qcow2 long.qcow2
    local ours theirs
    ours=$(qemu-img map --output=json -f raw "$HOST_URI")
    theirs=$(qemu-img map --output=json -f raw "$QNBD_URI")
    text_diff "$ours" "$theirs" "qemu-img map over NBD"
    ours=$(nbdinfo --map "$HOST_URI")
    theirs=$(nbdinfo --map "$QNBD_URI")
    text_diff "$ours" "$theirs" "base:allocation"
    ours=$(nbdinfo --map=qemu:allocation-depth "$HOST_URI")
    theirs=$(nbdinfo --map=qemu:allocation-depth "$QNBD_URI")
    text_diff "$ours" "$theirs" "qemu:allocation-depth"
    # the first extent only, as a client asking with REQ_ONE would see it
    ours=$(nbdinfo --map --totals "$HOST_URI")
    theirs=$(nbdinfo --map --totals "$QNBD_URI")
    text_diff "$ours" "$theirs" "map totals"
    host_stop
}

@test "block status of a sparse raw file and of the chain's layers agrees with qemu-nbd" {
    use_chain qcow2
    qemu-img create -q -f raw s.raw 20M
    QIO_FMT=raw qio s.raw 'write -P 1 1M 1M' 'write -P 2 7M 64k' 'write -P 3 19M 1M'
    local img fmt ours theirs
    for img in s.raw c/l2.qcow2; do
        fmt=qcow2
        [ "$img" = s.raw ] && fmt=raw
        host_start h --read-only --format $fmt "$img"
        qemu_nbd q -r -A -f $fmt "$img"
        ours=$(nbdinfo --map "$HOST_URI")
        theirs=$(nbdinfo --map "$QNBD_URI")
        text_diff "$ours" "$theirs" "base:allocation of $img"
        ours=$(nbdinfo --map=qemu:allocation-depth "$HOST_URI")
        theirs=$(nbdinfo --map=qemu:allocation-depth "$QNBD_URI")
        text_diff "$ours" "$theirs" "qemu:allocation-depth of $img"
        host_stop
        server_stop "$NBD_PIDFILE"
    done
}

@test "nbdinfo --list and --json: what qemu-nbd says, multi-conn and description" {
    qemu-img create -q -f raw d.raw 3M
    cp d.raw q.raw
    host_start h --description "the test disk" --format raw d.raw
    qemu_nbd q -D "the test disk" -A -f raw q.raw
    local ours theirs keep='[.exports[] | del(.uri, .can_multi_conn)]'
    ours=$(nbdinfo --json --list "nbd+unix:///?socket=$HOST_SOCK" | jq -S "$keep")
    theirs=$(nbdinfo --json --list "nbd+unix:///?socket=$NBD_SOCK" | jq -S "$keep")
    text_diff "$ours" "$theirs" "nbdinfo --list --json"
    [ "$(nbdinfo --json "$HOST_URI" | jq -r '.exports[0].can_multi_conn')" = true ]
    [ "$(nbdinfo --json "$HOST_URI" | jq -r '.exports[0].description')" = "the test disk" ]
    nbdinfo --list "nbd+unix:///?socket=$HOST_SOCK" | grep -q 'export="disk"'
    host_stop
    host_start ro --read-only --format raw d.raw
    [ "$(nbdinfo --json "$HOST_URI" | jq -c '.exports[0] | [.is_read_only, .can_trim, .can_zero, .can_multi_conn]')" = '[true,false,false,true]' ]
    host_stop
}

@test "nbdcopy with 4 connections: export to file and file to export" {
    use_chain qcow2
    host_start h --format qcow2 c/top.qcow2
    nbdcopy --connections=4 "$HOST_URI" out.raw
    qemu_same -f raw -F raw out.raw "$V/top.raw"
    head -c 32M /dev/urandom >in.raw
    nbdcopy --connections=4 --flush in.raw "$HOST_URI"
    nbdcopy --connections=4 "$HOST_URI" back.raw
    cmp in.raw back.raw
    host_stop
    qemu_same -f raw -F qcow2 in.raw c/top.qcow2
    check_ok c/top.qcow2
}

@test "concurrent clients: nbdcopy and several qemu-io at once" {
    qemu-img create -q -f qcow2 d.qcow2 64M
    head -c 32M /dev/urandom >in.raw
    host_start h --format qcow2 d.qcow2
    nbdcopy --connections=4 in.raw "$HOST_URI" &
    local copy=$! i pids=()
    for i in 0 1 2 3; do
        QIO_FMT=raw qio "$HOST_URI" "write -P $((0x60 + i)) $((32 + i * 8))M 4M" \
            "write -z $((36 + i * 8))M 2M" "read -P $((0x60 + i)) $((32 + i * 8))M 4M" &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i"; done
    wait "$copy"
    nbdcopy "$HOST_URI" out.raw
    host_stop
    cmp -n $((32 << 20)) in.raw out.raw
    for i in 0 1 2 3; do
        QIO_FMT=qcow2 qio d.qcow2 "read -P $((0x60 + i)) $((32 + i * 8))M 4M" \
            "read -P 0 $((36 + i * 8))M 2M"
    done
    check_ok d.qcow2
}

@test "errors: read-only EPERM, past the end EINVAL/ENOSPC, an I/O error is EIO and the server goes on" {
    qemu-img create -q -f raw d.raw 1M
    cat >errs.py <<'EOF'
import nbd, sys
def err(f, *a):
    try:
        f(*a)
        return "ok"
    except nbd.Error as e:
        return str(e.errno)
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
size = h.get_size()
print("read-past-end", err(h.pread, 4096, size - 100))
print("write-past-end", err(h.pwrite, b"x" * 4096, size - 100))
print("zero-past-end", err(h.zero, 4096, size))
print("trim-past-end", err(h.trim, 4096, size))
print("write", err(h.pwrite, b"y" * 512, 0))
print("trim", err(h.trim, 512, 0))
print("read", err(h.pread, 512, 0))
print("flush", err(h.flush))
EOF
    host_start ro --read-only --format raw d.raw
    run -0 "$PY" errs.py "$HOST_URI"
    [ "${lines[0]}" = "read-past-end EINVAL" ]
    [ "${lines[1]}" = "write-past-end EPERM" ] || [ "${lines[1]}" = "write-past-end ENOSPC" ]
    [ "${lines[4]}" = "write EPERM" ]
    [ "${lines[5]}" = "trim EPERM" ]
    [ "${lines[6]}" = "read ok" ]
    [ "${lines[7]}" = "flush ok" ]
    host_stop
    host_start rw --format raw d.raw
    run -0 "$PY" errs.py "$HOST_URI"
    [ "${lines[0]}" = "read-past-end EINVAL" ]
    [ "${lines[1]}" = "write-past-end ENOSPC" ]
    [ "${lines[2]}" = "zero-past-end ENOSPC" ]
    [ "${lines[3]}" = "trim-past-end EINVAL" ]
    [ "${lines[4]}" = "write ok" ]
    host_stop
    # every read of the file fails: EIO, and writes and other clients go on
    BLOCKCTL_FAULT='pread:*:eio:d.raw' host_start io --format raw d.raw
    run -0 "$PY" errs.py "$HOST_URI"
    [ "${lines[6]}" = "read EIO" ]
    [ "${lines[4]}" = "write ok" ]
    [ "${lines[7]}" = "flush ok" ]
    run -0 "$PY" errs.py "$HOST_URI"
    [ "${lines[6]}" = "read EIO" ]
    host_stop
}

@test "nbdsh: structured reads send holes as holes, DF one chunk; FAST_ZERO" {
    qemu-img create -q -f raw d.raw 8M
    QIO_FMT=raw qio d.raw 'write -P 0x31 0 1M' 'write -P 0x32 3M 1M'
    cat >sparse.py <<'EOF'
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
chunks = []
def cb(sub, off, status, err):
    chunks.append((off, len(sub), status))
    return 0
buf = h.pread_structured(8 << 20, 0, cb)
ref = open(sys.argv[2], "rb").read()
assert buf == ref, "contents differ"
holes = sorted((o, n) for o, n, s in chunks if s == nbd.READ_HOLE)
data = sorted((o, n) for o, n, s in chunks if s == nbd.READ_DATA)
print("holes", holes)
print("data", data)
chunks.clear()
buf = h.pread_structured(2 << 20, 512 << 10, cb, nbd.CMD_FLAG_DF)
assert buf == ref[512 << 10:(512 << 10) + (2 << 20)]
print("df", [(o, n, s) for o, n, s in chunks])
print("can_fast_zero", h.can_fast_zero())
try:
    h.zero(1 << 20, 0, nbd.CMD_FLAG_FAST_ZERO)
    print("fast-zero ok")
except nbd.Error as e:
    print("fast-zero", e.errno)
print("zeroed", h.pread(1 << 20, 0) == bytes(1 << 20))
EOF
    host_start h --format raw d.raw
    run -0 "$PY" sparse.py "$HOST_URI" d.raw
    [ "${lines[0]}" = "holes [(1048576, 2097152), (4194304, 4194304)]" ]
    [ "${lines[1]}" = "data [(0, 1048576), (3145728, 1048576)]" ]
    [ "${lines[2]}" = "df [(524288, 2097152, 1)]" ]
    [ "${lines[3]}" = "can_fast_zero True" ]
    # raw files punch holes: fast
    [ "${lines[4]}" = "fast-zero ok" ]
    [ "${lines[5]}" = "zeroed True" ]
    host_stop
}

@test "hostile clients are closed and another client's transfer completes" {
    qemu-img create -q -f raw d.raw 64M
    cat >legit.py <<'EOF'
import nbd, os, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
stop = sys.argv[2]
n = 0
while not os.path.exists(stop) or n < 20:
    data = os.urandom(1 << 20)
    off = (n % 60) << 20
    h.pwrite(data, off)
    assert h.pread(1 << 20, off) == data, "data mismatch"
    n += 1
h.flush()
h.shutdown()
print("legit", n)
EOF
    cat >hostile.py <<'EOF'
import socket, struct, sys, time
path, limit, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
MAGIC, OPTS, REP = 0x4e42444d41474943, 0x49484156454f5054, 0x3e889045565a9
fails = 0
def check(name, cond):
    global fails
    print(("ok " if cond else "FAIL ") + name)
    fails += 0 if cond else 1
def conn():
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.settimeout(timeout + 5)
    return s
def recvall(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b
def greet(s):
    g = recvall(s, 18)
    assert struct.unpack(">QQ", g[:16]) == (MAGIC, OPTS)
    s.sendall(struct.pack(">I", 1))
def closed(s, within):
    s.settimeout(within)
    try:
        while True:
            if not s.recv(1 << 16):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
def opt(s, o, data):
    s.sendall(struct.pack(">QII", OPTS, o, len(data)) + data)
def reply(s):
    magic, o, t, n = struct.unpack(">QIII", recvall(s, 20))
    assert magic == REP
    return t, recvall(s, n)
def go(s, name):
    opt(s, 7, struct.pack(">I", len(name)) + name + b"\0\0")
    while True:
        t, _ = reply(s)
        if t != 3:
            return t

s = conn(); greet(s); s.sendall(b"GARBAGE!" + bytes(8))
check("garbage option magic: closed", closed(s, 5))
s = conn(); s.sendall(b"\xff" * 64)
check("garbage instead of client flags: closed", closed(s, 5))
s = conn(); greet(s); s.sendall(struct.pack(">Q", OPTS) + b"\0\0"); s.shutdown(socket.SHUT_WR)
check("truncated option then EOF: closed", closed(s, 5))
s = conn(); greet(s); s.sendall(struct.pack(">QII", OPTS, 7, 0xfffffff0))
check("4 GiB option: closed without reading it", closed(s, 5))
s = conn(); greet(s); opt(s, 7, b"z" * 100000)
t, _ = reply(s)
check("100 kB option: NBD_REP_ERR_TOO_BIG", t == 0x80000009)
check("then GO still works", go(s, b"disk") == 1)
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 0xffffffff) + b"x" * 65536)
hdr = recvall(s, 16)
check("a 4 GiB write: EINVAL", struct.unpack(">IIQ", hdr)[1] == 22)
check("and closed, its payload unread", closed(s, 5))
# a client that never reads its replies: 200 reads of 1 MiB, then gone
s = conn(); greet(s); go(s, b"disk")
s.settimeout(0.5)
for i in range(200):
    try:
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, i, 0, 1 << 20))
    except socket.timeout:
        break
time.sleep(1)
s.close()
# many clients: beyond the limit they are closed at once, the others
# idle in the handshake until the timeout closes them
many = [conn() for _ in range(limit + 4)]
greeted = refused = 0
for c in many:
    try:
        c.settimeout(2)
        recvall(c, 18)
        greeted += 1
    except (EOFError, ConnectionResetError):
        refused += 1
    except socket.timeout:
        pass
check("clients beyond the limit refused (%d greeted, %d refused)" % (greeted, refused),
      refused >= 5 and greeted <= limit - 1)
start = time.time()
check("idle clients closed by the handshake timeout",
      all(closed(c, timeout + 5) for c in many))
check("within the timeout (%.1f s)" % (time.time() - start), time.time() - start < timeout + 4)
sys.exit(1 if fails else 0)
EOF
    host_start h --max-clients 6 --handshake-timeout 2 --format raw d.raw
    "$PY" legit.py "$HOST_URI" stop >legit.out 2>&1 &
    local legit=$!
    sleep 0.5
    run "$PY" hostile.py "$HOST_SOCK" 6 2
    touch stop
    echo "$output"
    [ "$status" -eq 0 ]
    wait "$legit" || fail "the legitimate client failed: $(cat legit.out)"
    grep -q '^legit [0-9]' legit.out
    # the server still serves
    QIO_FMT=raw qio "$HOST_URI" 'write -P 9 0 1M' 'read -P 9 0 1M'
    grep -q 'bad option magic' "$HOST_LOG"
    grep -q 'handshake timed out' "$HOST_LOG"
    grep -q 'refused' "$HOST_LOG"
    grep -q 'exceeds the maximum payload' "$HOST_LOG"
    host_stop
}

@test "TCP, socket mode, a live socket kept, a stale one replaced, SIGTERM with a client connected" {
    qemu-img create -q -f raw d.raw 4M
    local port
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    host_start h --tcp "127.0.0.1:$port" --mode 0640 --format raw d.raw
    [ "$(stat -c %a "$HOST_SOCK")" = 640 ]
    QIO_FMT=raw qio "nbd://127.0.0.1:$port/disk" 'write -P 7 0 1M' 'read -P 7 0 1M'
    # a second server on the same socket is refused
    qemu-img create -q -f raw other.raw 1M
    run -1 "$NBD_HOST" --socket "$HOST_SOCK" --format raw other.raw
    [[ $output == *"another server is listening"* ]]
    # SIGTERM while a client is connected: it ends cleanly and flushes
    "$PY" -c 'import nbd, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1]); h.pwrite(b"q" * 4096, 8192)
print("written", flush=True)
try:
    while True:
        h.pread(512, 0)
        time.sleep(0.05)
except nbd.Error:
    print("server gone", flush=True)' "$HOST_URI" >client.out 2>&1 3>&- &
    local client=$! n=100
    echo "$client" >>"$BATS_TEST_TMPDIR/.bgpids"
    while ! grep -q written client.out && [ $n -gt 0 ]; do sleep 0.05; n=$((n - 1)); done
    host_stop
    wait "$client"
    grep -q 'server gone' client.out
    QIO_FMT=raw qio d.raw 'read -P 0x71 8192 4096'
    # a server killed hard leaves a stale socket, which the next one replaces
    host_start k --format raw d.raw
    kill -KILL "$HOST_PID"
    wait "$HOST_PID" || true
    [ -S "$HOST_SOCK" ]
    host_start k --format raw d.raw
    QIO_FMT=raw qio "$HOST_URI" 'read -P 7 0 8k' 'read -P 0x71 8k 4k'
    host_stop
}
