#!/usr/bin/env bats
# lib/qmp against qemu-storage-daemon 7.2: the same bytes in get the same
# bytes out (qmp-diff.py, over two hundred cases), and the server's own
# limits and hardening, through tests/tools/qmp-host.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
QMP_HOST=${QMP_HOST:-$ROOT/${BUILD:-build}/tests/tools/qmp-host}
QMP_CALL=${QMP_CALL:-$ROOT/${BUILD:-build}/tests/tools/qmp-call}
PY=/usr/bin/python3

setup() {
    [ -x "$QMP_HOST" ] || skip "no $QMP_HOST (make unit builds it)"
    [ -x "$PY" ] || skip "no $PY"
    cd "$BATS_TEST_TMPDIR" || return 1
    HOST_PID=
    QSD_PID=
    HOLD_PID=
    UID_DIR=
}

teardown() {
    local p
    for p in $HOST_PID $QSD_PID $HOLD_PID; do
        kill "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    [ -z "$UID_DIR" ] || rm -rf "$UID_DIR"
    # a sanitizer build of qmp-host reports there
    if grep -q "Sanitizer" host.log 2>/dev/null; then
        cat host.log >&2
        return 1
    fi
    return 0
}

# start_host SOCKET [ARGS...]: qmp-host in the background, once it listens
start_host() {
    local sock=$1
    shift
    "$QMP_HOST" --socket "$sock" "$@" 2>>host.log &
    HOST_PID=$!
    for _ in $(seq 100); do
        [ -S "$sock" ] && grep -q "listening on '$sock'" host.log && return 0
        kill -0 "$HOST_PID" 2>/dev/null || fail "qmp-host exited: $(cat host.log)"
        sleep 0.05
    done
    fail "qmp-host did not listen on $sock"
}

talk() {
    "$PY" "$BATS_TEST_DIRNAME/qmp-talk.py" "$@"
}

@test "qmp: every transcript is qemu-storage-daemon's, byte for byte" {
    requires_cmd qemu-storage-daemon
    run --separate-stderr timeout 120 "$PY" "$BATS_TEST_DIRNAME/qmp-diff.py" \
        --qmp-host "$QMP_HOST" --dir "$BATS_TEST_TMPDIR"
    [ "$status" -eq 0 ] || fail "$output $stderr"
    [[ $output =~ ([0-9]+)\ cases,\ 0\ differ ]] || fail "$output"
    [ "${BASH_REMATCH[1]}" -ge 200 ] || fail "only ${BASH_REMATCH[1]} cases ran"
}

@test "qmp: the socket's mode; SIGTERM removes it" {
    start_host "$PWD/a.sock"
    [ "$(stat -c %a a.sock)" = 600 ]
    kill "$HOST_PID"
    wait "$HOST_PID"
    HOST_PID=
    [ ! -e a.sock ]
    start_host "$PWD/b.sock" --mode 0660
    [ "$(stat -c %a b.sock)" = 660 ]
}

@test "qmp: a live socket is refused, a stale one replaced, another file left alone" {
    start_host "$PWD/a.sock"
    run --separate-stderr "$QMP_HOST" --socket "$PWD/a.sock"
    [ "$status" -eq 1 ] || fail "second server on a live socket: $status"
    [[ $stderr == *"'$PWD/a.sock': a server is already listening on it"* ]] || fail "$stderr"
    run talk "$PWD/a.sock" '{"execute": "query-block-jobs"}'
    [[ $output == *'{"return": []}'* ]] || fail "the first server stopped serving: $output"

    kill -9 "$HOST_PID"
    wait "$HOST_PID" 2>/dev/null || true
    HOST_PID=
    [ -S a.sock ]
    start_host "$PWD/a.sock"
    run talk "$PWD/a.sock" '{"execute": "query-block-jobs"}'
    [[ $output == *'{"return": []}'* ]] || fail "not serving on the replaced socket: $output"

    echo data >file
    run --separate-stderr "$QMP_HOST" --socket "$PWD/file"
    [ "$status" -eq 1 ]
    [[ $stderr == *"'$PWD/file': exists and is not a socket"* ]] || fail "$stderr"
    [ "$(cat file)" = data ]
}

@test "qmp: a message over 1 MiB gets one error and the connection goes on" {
    start_host "$PWD/a.sock"
    run talk "$PWD/a.sock" --big $((1024 * 1024 + 1))
    [ "${#lines[@]}" -eq 4 ] || fail "$output"
    [ "${lines[2]}" = $'{"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}\r' ]
    [[ ${lines[3]} == '{"return": {"qemu": '*'"id": "end"}'* ]] || fail "$output"
    # just under the limit is answered
    run talk "$PWD/a.sock" --big $((1024 * 1024 - 100))
    [ "${#lines[@]}" -eq 4 ] && [[ ${lines[2]} == '{"return": {"qemu": '* ]] || fail "${output:0:300}"
}

@test "qmp: a client of another uid is refused, and logged" {
    [ "$(id -u)" = 0 ] || skip "needs root to connect as another user"
    UID_DIR=$(mktemp -d /tmp/qmp-uid.XXXXXX)
    chmod 755 "$UID_DIR"
    start_host "$UID_DIR/a.sock" --mode 0777
    run talk "$UID_DIR/a.sock" --uid 65534
    [ "$output" = "<EOF>" ] || fail "uid 65534 was served: $output"
    grep -q "refused a client (pid [0-9]*, uid 65534): neither root nor uid 0" host.log
    run talk "$UID_DIR/a.sock" '{"execute": "query-block-jobs"}'
    [[ $output == *'{"return": []}'* ]]
}

@test "qmp: at most --max-clients at once; a client that never reads is dropped past 16 MiB" {
    start_host "$PWD/a.sock" --max-clients 2
    "$PY" - "$PWD/a.sock" <<'EOF'
import socket, sys, time
def conn():
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(10); return s
def line(s, buf=[b'']):
    while b'\n' not in buf[0]:
        d = s.recv(1 << 20)
        if not d:
            return None
        buf[0] += d
    l, buf[0] = buf[0].split(b'\n', 1)
    return l
a, b = conn(), conn()
assert line(a).startswith(b'{"QMP"')
assert b.recv(100).startswith(b'{"QMP"')
c = conn()
assert c.recv(100) == b'', 'a third client was served'
for s in (a, b):
    s.sendall(b'{"execute": "qmp_capabilities"}')
assert line(a) == b'{"return": {}}\r'
# b reads no more; a reads: events from a thread, and events of 1 MiB
def until_return():
    global n
    while True:
        l = line(a)
        assert l is not None, 'the reading client was dropped'
        if l == b'{"return": {}}\r':
            return
        n += b'"event": "BIG"' in l
n = 0
a.sendall(b'{"execute": "x-event-thread", "arguments": {"name": "BIG", "count": 24}}')
until_return()
pad = 'p' * ((1 << 20) - 1000)    # a message may have 1 MiB
for i in range(18):
    a.sendall(('{"execute": "x-event", "arguments": {"name": "BIG", "data": {"pad": "%s"}}}' % pad).encode())
    until_return()
while n < 42:
    l = line(a)
    assert l is not None
    n += b'"event": "BIG"' in l
print('events', n)
EOF
    grep -q "refused a client (pid [0-9]*, uid [0-9]*): already 2 clients" host.log
    grep -q "QMP client 2 disconnected: it does not read (more than 16 MiB of output queued)" host.log ||
        fail "$(cat host.log)"
    run talk "$PWD/a.sock" '{"execute": "query-block-jobs"}'
    [[ $output == *'{"return": []}'* ]] || fail "a new client is not served: $output"
}

@test "qmp: quit answers, runs nothing after it, then the server closes and removes its socket" {
    start_host "$PWD/a.sock"
    run talk "$PWD/a.sock" '{"execute": "quit", "id": 1}{"execute": "x-event", "arguments": {"name": "NO"}}'
    [ "${lines[2]}" = $'{"return": {}, "id": 1}\r' ] || fail "$output"
    # the rest of the same write is not run (QEMU: as it happens to)
    [ "${lines[3]}" = "<EOF>" ] || fail "$output"
    [ "${#lines[@]}" -eq 4 ]
    wait "$HOST_PID"
    HOST_PID=
    [ ! -e a.sock ]
}

@test "qmp: the client drives qemu-storage-daemon: replies, queued events, error classes, its end" {
    requires_cmd qemu-storage-daemon
    qemu-storage-daemon --chardev socket,path="$PWD/q.sock",server=on,wait=off,id=c0 \
        --monitor chardev=c0 2>qsd.log &
    QSD_PID=$!
    for _ in $(seq 100); do [ -S q.sock ] && break; sleep 0.05; done
    run --separate-stderr "$QMP_CALL" "$PWD/q.sock" query-version \
        'blockdev-add={"driver": "null-co", "node-name": "n0"}' \
        'block-stream={"device": "n0", "job-id": "j"}' \
        @JOB_STATUS_CHANGE @JOB_STATUS_CHANGE 'block-job-cancel={"device": "nope"}' \
        'block-job-set-speed={"device": "j", "speed": "fast"}' 'qom-get={"path": "/x", "property": "y"}'
    [ "$status" -eq 1 ] || fail "$output $stderr"
    local v
    v=$(qemu-storage-daemon --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\)\.\([0-9]*\).*/"minor": \2, "micro": \3, "major": \1/p')
    [[ ${lines[0]} == "ok query-version: {\"qemu\": {$v}, \"package\": "* ]] || fail "$output"
    [ "${lines[1]}" = "ok blockdev-add: {}" ]
    [ "${lines[2]}" = "ok block-stream: {}" ]
    # sent before the reply to block-stream: queued by the client
    [ "${lines[3]}" = 'event JOB_STATUS_CHANGE: {"status": "created", "id": "j"}' ]
    [ "${lines[4]}" = 'event JOB_STATUS_CHANGE: {"status": "running", "id": "j"}' ]
    [ "${lines[5]}" = "error block-job-cancel: DeviceNotActive: Block job 'nope' not found" ]
    [ "${lines[6]}" = "error block-job-set-speed: GenericError: Invalid parameter type for 'speed', expected: integer" ]
    [ "${lines[7]}" = "error qom-get: DeviceNotFound: Device '/x' not found" ]

    # QEMU serves one client per monitor: a second one waits for its greeting
    "$PY" -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(100); time.sleep(30)' "$PWD/q.sock" &
    HOLD_PID=$!
    sleep 0.3
    run --separate-stderr "$QMP_CALL" --timeout 300 "$PWD/q.sock" query-version
    [ "$status" -eq 2 ]
    [[ $stderr == *"QMP: '$PWD/q.sock': no greeting within 300 ms"* ]] || fail "$stderr"
    kill "$HOLD_PID"
    wait "$HOLD_PID" 2>/dev/null || true
    HOLD_PID=

    run --separate-stderr "$QMP_CALL" "$PWD/q.sock" quit query-version
    [ "${lines[0]}" = "ok quit: {}" ] || fail "$output $stderr"
    [ "${lines[1]}" = "error query-version: GenericError: QMP: '$PWD/q.sock': the server closed the connection" ] ||
        fail "$output"
    wait "$QSD_PID"
    QSD_PID=
}

@test "qmp: the client reads replies of megabytes and events from threads" {
    start_host "$PWD/a.sock"
    run --separate-stderr "$QMP_CALL" "$PWD/a.sock" 'x-big={"size": 3000000}' \
        'x-event-thread={"name": "T", "count": 3}' @T @T @T
    [ "$status" -eq 0 ] || fail "$stderr"
    [ "${#lines[0]}" -eq $((3000000 + 12)) ] || fail "${#lines[0]} bytes"
    [[ ${lines[0]} == 'ok x-big: "xxxxxxxx'*'xxx"' ]]
    [ "${lines[1]}" = "ok x-event-thread: {}" ]
    [ "${lines[2]}" = 'event T: {"n": 0}' ]
    [ "${lines[3]}" = 'event T: {"n": 1}' ]
    [ "${lines[4]}" = 'event T: {"n": 2}' ]
}
