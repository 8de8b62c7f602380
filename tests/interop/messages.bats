#!/usr/bin/env bats
# Messages a person reads (issue 12, part 3): a missing image deep in a
# chain is one line; NBD errors in plain words with the URI; create says
# nothing of formatting what it cannot write; -o help lists only what is
# supported; stream with nothing to stream is the same for every format;
# bitmap --list with no bitmaps says so; info of a truncated qcow2 prints
# what qemu-img info prints.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
}

@test "a missing image at the bottom of a chain of 250: one line naming it and its overlay" {
    local i cmd
    mkq c0.qcow2 1M
    for ((i = 1; i < 250; i++)); do
        qemu-img create -q -f qcow2 -b "c$((i - 1)).qcow2" -F qcow2 "c$i.qcow2" ||
            fail "qemu-img create c$i"
    done
    rm c0.qcow2
    for cmd in "info --backing-chain" check map stream "mirror -q" "convert -O raw"; do
        local out=
        case $cmd in mirror* | convert*) out=out.img ;; esac
        # shellcheck disable=SC2086
        run --separate-stderr "$PROG" $cmd c249.qcow2 $out
        [ "$status" -ne 0 ] || fail "$cmd: exit 0"
        [ "${#stderr_lines[@]}" -eq 1 ] || fail "$cmd: ${#stderr_lines[@]} lines: $stderr"
        [ "$stderr" = "blockctl: cannot open backing file 'c0.qcow2' of 'c1.qcow2': No such file or directory" ] ||
            fail "$cmd: $stderr"
    done
    # a damaged image in the middle: named once, with the image above it
    echo garbage >c100.qcow2
    run -1 --separate-stderr "$PROG" info --backing-chain c249.qcow2
    [ "${#stderr_lines[@]}" -eq 1 ] && [ "${#stderr}" -lt 200 ] || fail "$stderr"
    [[ $stderr == "blockctl: backing file of 'c101.qcow2': 'c100.qcow2': "* ]] || fail "$stderr"
}

@test "NBD errors: the URI and the reason in plain words, no libnbd function names" {
    local uri="nbd+unix:///vm?socket=$PWD/none.sock"
    run -1 --separate-stderr "$PROG" info "$uri"
    [ "$stderr" = "blockctl: cannot reach $uri: No such file or directory" ] || fail "$stderr"
    run -1 --separate-stderr "$PROG" info "nbd://127.0.0.1:1/x"
    [ "$stderr" = "blockctl: cannot reach nbd://127.0.0.1:1/x: Connection refused" ] || fail "$stderr"
    # a server that closes each connection at once
    /usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4)
open(sys.argv[1] + ".up", "w").close()
for _ in range(2):
    c, _ = s.accept(); c.close()
' "$PWD/close.sock" &
    local pid=$! i
    for ((i = 0; i < 100; i++)); do [ -e close.sock.up ] && break; sleep 0.1; done
    uri="nbd+unix:///vm?socket=$PWD/close.sock"
    run -1 --separate-stderr "$PROG" info "$uri"
    [ "$stderr" = "blockctl: cannot reach $uri: server closed the connection" ] || fail "$stderr"
    run -1 --separate-stderr "$PROG" mirror "$uri" out.raw
    [ "$stderr" = "blockctl: cannot reach $uri: server closed the connection" ] || fail "$stderr"
    wait "$pid"
    # qemu-nbd without the export asked for
    mkq s.qcow2 1M
    qemu-nbd -r -t -x vm -k "$PWD/n.sock" -f qcow2 s.qcow2 &
    pid=$!
    for ((i = 0; i < 100; i++)); do [ -S n.sock ] && break; sleep 0.1; done
    uri="nbd+unix:///nope?socket=$PWD/n.sock"
    run -1 --separate-stderr "$PROG" info "$uri"
    kill "$pid"
    wait "$pid" || true
    [ "$stderr" = "blockctl: cannot reach $uri: server has no export named 'nope'" ] || fail "$stderr"
}

@test "create checks that it may write before printing 'Formatting'" {
    run -1 --separate-stderr "$PROG" create -f qcow2 nodir/x.qcow2 1M
    [ -z "$output" ] || fail "stdout: $output"
    [ "$stderr" = "blockctl: cannot create 'nodir/x.qcow2': No such file or directory" ] || fail "$stderr"
    mkq there.qcow2 1M
    run -1 --separate-stderr "$PROG" create -f qcow2 there.qcow2 1M
    [ -z "$output" ] || fail "stdout: $output"
    if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
        mkdir ro && chmod 555 ro && chmod 755 "$BATS_TEST_TMPDIR"
        run -1 --separate-stderr setpriv --reuid=65534 --regid=65534 --clear-groups \
            "$PROG" create -f qcow2 "$PWD/ro/x.qcow2" 1M
        [ -z "$output" ] || fail "stdout: $output"
        [[ $stderr == *"cannot create '$PWD/ro/x.qcow2': Permission denied" ]] || fail "$stderr"
    fi
    run -0 --separate-stderr "$PROG" create -f qcow2 new.qcow2 1M
    [[ $output == "Formatting 'new.qcow2', fmt=qcow2 "* ]] || fail "$output"
}

@test "-o help lists only the options that are supported; those that are not still say why" {
    local c
    for c in "create -f qcow2" "convert -O qcow2" "snapshot"; do
        # shellcheck disable=SC2086
        run -0 "$PROG" $c -o help $([[ $c == snapshot ]] && echo a b)
        [[ $output == *cluster_size* ]] || fail "$c -o help: $output"
        ! grep -qE 'encrypt|data_file|not supported' <<<"$output" || fail "$c -o help: $output"
    done
    run -1 --separate-stderr "$PROG" create -f qcow2 -o encryption=on e.qcow2 1M
    [[ $stderr == *"encrypted qcow2 images are not supported"* ]] || fail "$stderr"
    run -1 --separate-stderr "$PROG" create -f qcow2 -o data_file=d e.qcow2 1M
    [[ $stderr == *"external data files are not supported"* ]] || fail "$stderr"
}

@test "stream with nothing to stream: exit 0 and the same output for raw and qcow2" {
    local f p out=()
    qemu-img create -q -f raw r.raw 1M
    mkq q.qcow2 1M
    for p in "" "-p" "--progress=json"; do
        out=()
        for f in r.raw q.qcow2; do
            # shellcheck disable=SC2086
            run -0 "$PROG" stream $p "$f"
            out+=("$output")
        done
        [ "${out[0]}" = "${out[1]}" ] || fail "stream $p: raw '${out[0]}', qcow2 '${out[1]}'"
    done
    [ "${out[0]}" = '{"done": 0, "total": 0}' ] || fail "${out[0]}"
}

@test "bitmap --list with no bitmaps says so (JSON: an empty list)" {
    mkq q.qcow2 1M
    run -0 "$PROG" bitmap --list q.qcow2
    [ "$output" = "'q.qcow2' has no persistent bitmaps" ] || fail "$output"
    run -0 "$PROG" bitmap --list --output=json q.qcow2
    [ "$(jq length <<<"$output")" = 0 ] || fail "$output"
    run -0 "$PROG" bitmap --add q.qcow2 b1
    run -0 "$PROG" bitmap --list q.qcow2
    [[ ${lines[1]} == b1* ]] || fail "$output"
}

@test "info of a truncated qcow2 prints what qemu-img info prints" {
    local sz a b
    mkq s.qcow2 64M
    qio s.qcow2 'write -P 7 0 4M' 'write -P 9 33M 1M'
    for sz in 0 4 50 71 100 104 112 512 65536 65600 131072 140000 196608 196700 262144 300000; do
        cp s.qcow2 t.qcow2
        truncate -s "$sz" t.qcow2
        a=$(qemu-img info t.qcow2 2>&1 | sed 's/^qemu-img: Could not open /blockctl: /'; echo "exit ${PIPESTATUS[0]}")
        b=$("$PROG" info t.qcow2 2>&1; echo "exit $?")
        [ "$a" = "$b" ] || fail "truncated to $sz: qemu-img:" "$a" "blockctl:" "$b"
        a=$(qemu-img info --output=json t.qcow2 2>/dev/null | jq -S 'del(.filename)' 2>/dev/null)
        b=$("$PROG" info --output=json t.qcow2 2>/dev/null | jq -S 'del(.filename)' 2>/dev/null)
        [ "$a" = "$b" ] || fail "truncated to $sz: --output=json differs:" "$a" "$b"
    done
}
