#!/usr/bin/env bats
# NBD over TLS between hosts: blockctl agent --tls-creds/--tls-psk serving
# qemu-img, qemu-io and nbdinfo; qemu-nbd --tls-creds serving blockctl
# mirror, info and compare over nbds://; x509 certificates (certtool) and
# PSK keys (psktool) made at test time.  Servers and clients run in two
# network namespaces joined by a veth pair (ip netns, as root); where the
# kernel or the user may not make them, both sides use loopback TCP (the
# test names say which: "[netns]" or "[loopback]").  Wrong certificates,
# keys and clear clients of a --tls=require server are refused, with a
# one-line error naming the URI on the client's side and the reason in the
# server's log.  The data copied compares equal (qemu-img compare).
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

PY=/usr/bin/python3

# ---------------------------------------------------------------- set-up

# cert NAME CA-DIR TEMPLATE OUT-CERT OUT-KEY: a key and a certificate signed
# by the CA in CA-DIR (ca-cert.pem, ca-key.pem)
cert() {
    certtool --generate-privkey --outfile "$5" >/dev/null 2>&1 &&
        certtool --generate-certificate --load-ca-privkey "$2/ca-key.pem" \
            --load-ca-certificate "$2/ca-cert.pem" --load-privkey "$5" \
            --template "$3" --outfile "$4" >/dev/null 2>&1
}

# ca DIR: a self-signed CA in DIR
ca() {
    mkdir -p "$1"
    printf 'cn = blockctl test CA %s\nca\ncert_signing_key\nexpiration_days = 2\n' "$1" \
        >"$1/ca.info"
    certtool --generate-privkey --outfile "$1/ca-key.pem" >/dev/null 2>&1 &&
        certtool --generate-self-signed --load-privkey "$1/ca-key.pem" \
            --template "$1/ca.info" --outfile "$1/ca-cert.pem" >/dev/null 2>&1
}

make_pki() {
    local p=$PKI
    mkdir -p "$p"
    ca "$p/ca" && ca "$p/otherca" || return 1
    cat >"$p/server.info" <<EOF
organization = blockctl test
cn = $SRV_IP
dns_name = localhost
ip_address = 127.0.0.1
ip_address = $SRV_IP
tls_www_server
encryption_key
signing_key
expiration_days = 2
EOF
    printf 'organization = blockctl test\ncn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n' \
        >"$p/client.info"
    # the server's and the good client's directories, as QEMU lays them out
    mkdir -p "$p/srv" "$p/cli" "$p/othercli" "$p/badkey" "$p/untrusting"
    cp "$p/ca/ca-cert.pem" "$p/srv/" && cp "$p/ca/ca-cert.pem" "$p/cli/" &&
        cert server "$p/ca" "$p/server.info" "$p/srv/server-cert.pem" "$p/srv/server-key.pem" &&
        cert client "$p/ca" "$p/client.info" "$p/cli/client-cert.pem" "$p/cli/client-key.pem" ||
        return 1
    # a client whose certificate another CA signed (it trusts the server)
    cp "$p/ca/ca-cert.pem" "$p/othercli/" &&
        cert client "$p/otherca" "$p/client.info" "$p/othercli/client-cert.pem" \
            "$p/othercli/client-key.pem" || return 1
    # the good certificate with a key that is not its own
    cp "$p/cli/ca-cert.pem" "$p/cli/client-cert.pem" "$p/badkey/" &&
        certtool --generate-privkey --outfile "$p/badkey/client-key.pem" >/dev/null 2>&1 ||
        return 1
    # a good client certificate, but trusting another CA (not the server's)
    cp "$p/otherca/ca-cert.pem" "$p/cli/client-cert.pem" "$p/cli/client-key.pem" \
        "$p/untrusting/" || return 1
    # PSK: qemu's tls-creds-psk reads DIR/keys.psk; user "qemu" is its default
    mkdir -p "$p/psk" "$p/otherpsk"
    psktool -u qemu -p "$p/psk/keys.psk" >/dev/null 2>&1 &&
        psktool -u qemu -p "$p/otherpsk/keys.psk" >/dev/null 2>&1
}

# Two namespaces joined by a veth pair, or loopback: sets SRV, CLI (command
# prefixes), SRV_IP, MODE
make_net() {
    local base="bctls$$"
    SRV=()
    CLI=()
    SRV_IP=127.0.0.1
    MODE=loopback
    [ "$(id -u)" = 0 ] && command -v ip >/dev/null || return 0
    if ip netns add "${base}s" 2>/dev/null && ip netns add "${base}c" 2>/dev/null &&
        ip link add "${base}a" type veth peer name "${base}b" 2>/dev/null &&
        ip link set "${base}a" netns "${base}s" && ip link set "${base}b" netns "${base}c" &&
        ip -n "${base}s" addr add 10.231.0.1/24 dev "${base}a" &&
        ip -n "${base}c" addr add 10.231.0.2/24 dev "${base}b" &&
        ip -n "${base}s" link set "${base}a" up && ip -n "${base}c" link set "${base}b" up &&
        ip -n "${base}s" link set lo up && ip -n "${base}c" link set lo up; then
        SRV=(ip netns exec "${base}s")
        CLI=(ip netns exec "${base}c")
        SRV_IP=10.231.0.1
        MODE=netns
        echo "$base" >"$BATS_FILE_TMPDIR/netns"
    else
        ip netns del "${base}s" 2>/dev/null
        ip netns del "${base}c" 2>/dev/null
    fi
    return 0
}

setup_file() {
    command -v certtool >/dev/null && command -v psktool >/dev/null || return 0
    PKI=$BATS_FILE_TMPDIR/pki
    make_net
    make_pki || { echo "certtool failed" >&2; return 1; }
    export PKI SRV_IP MODE
    printf '%s\n' "${SRV[*]}" >"$BATS_FILE_TMPDIR/srv"
    printf '%s\n' "${CLI[*]}" >"$BATS_FILE_TMPDIR/cli"
}

teardown_file() {
    local base
    if [ -f "$BATS_FILE_TMPDIR/netns" ]; then
        base=$(cat "$BATS_FILE_TMPDIR/netns")
        ip netns del "${base}s" 2>/dev/null
        ip netns del "${base}c" 2>/dev/null
    fi
    return 0
}

setup() {
    requires_qemu
    requires_cmd qemu-nbd certtool psktool nbdinfo
    cd "$BATS_TEST_TMPDIR" || return 1
    read -r -a SRV <"$BATS_FILE_TMPDIR/srv"
    read -r -a CLI <"$BATS_FILE_TMPDIR/cli"
    PORT=$("${SRV[@]}" "$PY" -c 'import socket; s = socket.socket(); s.bind(("'"$SRV_IP"'", 0)); print(s.getsockname()[1])')
    U=nbds://$SRV_IP:$PORT
}

teardown() {
    copy_teardown
}

# up NAME CMD...: run a server in the foreground (in the background of the
# test), its stderr in NAME.log, until SRV_IP:PORT takes connections
up() {
    local name=$1 n=100
    shift
    "$@" 2>>"$BATS_TEST_TMPDIR/$name.log" >/dev/null 3>&- &
    echo $! >"$BATS_TEST_TMPDIR/$name.pid"
    disown
    echo "$BATS_TEST_TMPDIR/$name.pid" >>"$BATS_TEST_TMPDIR/.servers"
    while [ $n -gt 0 ]; do
        running "$(cat "$BATS_TEST_TMPDIR/$name.pid")" ||
            { fail "$name did not start: $(cat "$BATS_TEST_TMPDIR/$name.log")"; return 1; }
        "${CLI[@]}" "$PY" -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)' \
            "$SRV_IP" "$PORT" 2>/dev/null && return 0
        sleep 0.1
        n=$((n - 1))
    done
    fail "$name does not listen on $SRV_IP:$PORT: $(cat "$BATS_TEST_TMPDIR/$name.log")"
}

# agent_up ARGS...: blockctl agent in the server's namespace on
# tcp:SRV_IP:PORT, logging to agent.log
agent_up() {
    up agent "${SRV[@]}" "$PROG" agent --nbd "tcp:$SRV_IP:$PORT" "$@"
}

agent_down() {
    server_stop "$BATS_TEST_TMPDIR/agent.pid"
}

# qnbd_up ARGS...: qemu-nbd (persistent) in the server's namespace on
# SRV_IP:PORT, logging to qemu-nbd.log
qnbd_up() {
    up qemu-nbd "${SRV[@]}" qemu-nbd -t --shared=8 -b "$SRV_IP" -p "$PORT" "$@"
}

qnbd_down() {
    server_stop "$BATS_TEST_TMPDIR/qemu-nbd.pid"
}

# tls_obj KIND DIR: QEMU's --object for a client
x509_obj() {
    echo "tls-creds-x509,id=tls0,endpoint=client,dir=$1"
}
psk_obj() {
    echo "tls-creds-psk,id=tls0,endpoint=client,dir=$1,username=qemu"
}

# qopts EXPORT: --image-opts for QEMU's NBD client with tls0
qopts() {
    echo "driver=nbd,host=$SRV_IP,port=$PORT,export=$1,tls-creds=tls0"
}

# a raw disk with data, a hole and zeroes; its expected contents in want.raw
make_disk() {
    qemu-img create -q -f raw disk.raw 16M
    qio_raw disk.raw 'write -P 0x5a 0 1M' 'write -P 0xa5 9M 512k'
}

qio_raw() {
    QIO_FMT=raw qio "$@"
}

# ---------------------------------------------------------------- the agent serving

@test "agent --tls-creds: qemu-io writes, qemu-img and nbdinfo read over TLS" {
    make_disk
    cp disk.raw want.raw
    agent_up --disk "vda=$PWD/disk.raw,format=raw" --tls-creds "$PKI/srv"
    # written through TLS by QEMU's client
    run -0 "${CLI[@]}" qemu-io --object "$(x509_obj "$PKI/cli")" --image-opts "$(qopts vda)" \
        -c 'write -P 0x77 4M 2M' -c 'read -P 0x5a 0 1M'
    [[ $output != *"Pattern verification failed"* ]] || fail "$output"
    qio_raw want.raw 'write -P 0x77 4M 2M'
    run -0 "${CLI[@]}" nbdinfo --size "$U/vda?tls-certificates=$PKI/cli"
    [ "$output" = 16777216 ] || fail "nbdinfo: $output"
    run -0 "${CLI[@]}" qemu-img convert -O raw --object "$(x509_obj "$PKI/cli")" \
        --image-opts "$(qopts vda)" copy.raw
    run -0 qemu-img compare -f raw -F raw copy.raw want.raw
    # blockctl itself, and its compare against the file
    run -0 "${CLI[@]}" "$PROG" compare --tls-creds "$PKI/cli" "$U/vda" want.raw
    agent_down
    run -0 qemu-img compare -f raw -F raw disk.raw want.raw
    grep -q "TLS1.[23], its certificate verified" agent.log || fail "$(cat agent.log)"
}

@test "agent --tls-creds: blockctl mirror into it over nbds://; the copy compares equal" {
    mkq src.qcow2 32M
    qio src.qcow2 'write -P 0x11 0 3M' 'write -z 8M 1M' 'write -P 0x22 20M 64k'
    qemu-img create -q -f qcow2 t.qcow2 32M
    qio t.qcow2 'write -P 0xee 0 32M'
    agent_up --disk "vdb=$PWD/t.qcow2" --tls-creds "$PKI/srv"
    run --separate-stderr "${CLI[@]}" "$PROG" mirror --tls-creds "$PKI/cli" src.qcow2 "$U/vdb"
    [ "$status" -eq 0 ] || fail "mirror: $status: $stderr"
    BLOCKCTL_TLS_CREDS=$PKI/cli run -0 "${CLI[@]}" "$PROG" compare src.qcow2 "$U/vdb"
    agent_down
    run -0 qemu-img compare src.qcow2 t.qcow2
    run -0 qemu-img check t.qcow2
}

@test "agent --tls=require refuses a clear client, which says so in one line" {
    make_disk
    agent_up --disk "vda=$PWD/disk.raw,format=raw" --tls-creds "$PKI/srv" --tls=require
    run --separate-stderr "${CLI[@]}" qemu-img info "nbd://$SRV_IP:$PORT/vda"
    [ "$status" -ne 0 ] || fail "a clear qemu-img got in: $output"
    [[ $stderr == *"TLS is required"* ]] || fail "qemu-img: $stderr"
    run --separate-stderr "${CLI[@]}" "$PROG" info "nbd://$SRV_IP:$PORT/vda"
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    one_line_error "nbd://$SRV_IP:$PORT/vda"
    [[ $stderr == *"requires TLS"* ]] || fail "$stderr"
    run -1 "${CLI[@]}" nbdinfo "nbd://$SRV_IP:$PORT/vda"
    grep -q "refused: TLS is required" agent.log || fail "$(cat agent.log)"
    # and a TLS client is served all along
    run -0 "${CLI[@]}" "$PROG" info --tls-creds "$PKI/cli" "$U/vda"
}

@test "agent --tls=on serves clear and TLS clients" {
    make_disk
    cp disk.raw want.raw
    agent_up --disk "vda=$PWD/disk.raw,format=raw" --tls-creds "$PKI/srv" --tls=on
    run -0 "${CLI[@]}" qemu-io -f raw -r -c 'read -P 0x5a 0 1M' "nbd://$SRV_IP:$PORT/vda"
    [[ $output != *"failed"* ]] || fail "$output"
    run -0 "${CLI[@]}" "$PROG" compare --tls-creds "$PKI/cli" "$U/vda" want.raw
    run -0 "${CLI[@]}" "$PROG" compare "nbd://$SRV_IP:$PORT/vda" want.raw
}

@test "agent: a client certificate of another CA, or a wrong key, is refused on both sides" {
    make_disk
    cp disk.raw want.raw
    agent_up --disk "vda=$PWD/disk.raw,format=raw" --tls-creds "$PKI/srv"
    run --separate-stderr "${CLI[@]}" "$PROG" info --tls-creds "$PKI/othercli" "$U/vda"
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    one_line_error "$U/vda"
    # (a GnuTLS client may also keep back a certificate whose issuer is
    # not among the CAs the server names: then it showed none)
    grep -qE "refused: TLS handshake failed: (its certificate is not signed by our CA|it showed no certificate)" \
        agent.log || fail "agent: $(cat agent.log)"
    run --separate-stderr "${CLI[@]}" qemu-img info --object "$(x509_obj "$PKI/othercli")" \
        --image-opts "$(qopts vda)"
    [ "$status" -ne 0 ] || fail "qemu-img with another CA's certificate got in"
    # no certificate at all (a directory with the CA only)
    mkdir noclient
    cp "$PKI/ca/ca-cert.pem" noclient/
    local before
    before=$(grep -c "refused: TLS handshake failed: it showed no certificate" agent.log || true)
    run --separate-stderr "${CLI[@]}" "$PROG" info --tls-creds "$PWD/noclient" "$U/vda"
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    one_line_error "$U/vda"
    [ "$(grep -c "refused: TLS handshake failed: it showed no certificate" agent.log)" -gt \
        "$before" ] || fail "agent: $(cat agent.log)"
    # a key that is not the certificate's: refused before anything is sent
    run --separate-stderr "${CLI[@]}" "$PROG" info --tls-creds "$PKI/badkey" "$U/vda"
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    one_line_error "$U/vda"
    # a client that does not trust the server's CA
    run --separate-stderr "${CLI[@]}" "$PROG" info --tls-creds "$PKI/untrusting" "$U/vda"
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    one_line_error "$U/vda"
    [[ $stderr == *certificate* ]] || fail "$stderr"
    # the disk is untouched and the agent still serves good clients
    run -0 "${CLI[@]}" "$PROG" compare --tls-creds "$PKI/cli" "$U/vda" want.raw
}

@test "agent --tls-psk: QEMU's tls-creds-psk client reads and writes; another key is refused" {
    make_disk
    cp disk.raw want.raw
    agent_up --disk "vda=$PWD/disk.raw,format=raw" --tls-psk "$PKI/psk/keys.psk"
    run -0 "${CLI[@]}" qemu-io --object "$(psk_obj "$PKI/psk")" --image-opts "$(qopts vda)" \
        -c 'write -P 0x66 2M 1M'
    qio_raw want.raw 'write -P 0x66 2M 1M'
    run -0 "${CLI[@]}" "$PROG" compare --tls-psk "$PKI/psk/keys.psk" "$U/vda" want.raw
    run --separate-stderr "${CLI[@]}" qemu-img info --object "$(psk_obj "$PKI/otherpsk")" \
        --image-opts "$(qopts vda)"
    [ "$status" -ne 0 ] || fail "qemu-img with another key got in"
    run --separate-stderr "${CLI[@]}" "$PROG" info --tls-psk "$PKI/otherpsk/keys.psk" "$U/vda"
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    one_line_error "$U/vda"
    grep -q "refused: TLS handshake failed" agent.log || fail "$(cat agent.log)"
    agent_down
    run -0 qemu-img compare -f raw -F raw disk.raw want.raw
}

@test "agent over nbds+unix://: a UNIX socket with TLS; convert out of it" {
    make_disk
    local sock
    sock=$(sock_path tls)
    echo "$BATS_TEST_TMPDIR/agent.pid" >>"$BATS_TEST_TMPDIR/.servers"
    "$PROG" agent --nbd "unix:$sock" --disk "vda=$PWD/disk.raw,format=raw" \
        --tls-creds "$PKI/srv" --daemonize --pidfile "$BATS_TEST_TMPDIR/agent.pid" \
        2>>agent.log 3>&- || fail "agent: $(cat agent.log)"
    cp disk.raw want.raw
    run --separate-stderr "$PROG" convert --tls-creds "$PKI/cli" -O qcow2 \
        "nbds+unix:///vda?socket=$sock" copy.qcow2
    [ "$status" -eq 0 ] || fail "convert: $stderr"
    run -0 qemu-img compare -f qcow2 -F raw copy.qcow2 want.raw
    run --separate-stderr "$PROG" info "nbd+unix:///vda?socket=$sock"
    [ "$status" -eq 1 ] || fail "a clear client got in over the UNIX socket"
    one_line_error "nbd+unix:///vda?socket=$sock"
}

# ---------------------------------------------------------------- qemu-nbd serving

@test "qemu-nbd --tls-creds: blockctl mirror, info and compare over nbds:// (x509)" {
    mkq src.qcow2 32M
    qio src.qcow2 'write -P 0x31 1M 2M' 'write -z 6M 2M' 'write -P 0x32 30M 1M'
    qemu-img create -q -f qcow2 t.qcow2 32M
    qnbd_up --object "tls-creds-x509,id=tls0,endpoint=server,dir=$PKI/srv" --tls-creds tls0 \
        -f qcow2 -x t t.qcow2
    run --separate-stderr "${CLI[@]}" "$PROG" info --tls-creds "$PKI/cli" --output=json "$U/t"
    [ "$status" -eq 0 ] || fail "info: $stderr"
    [ "$(jq '."virtual-size"' <<<"$output")" = 33554432 ] || fail "$output"
    run --separate-stderr "${CLI[@]}" "$PROG" mirror --tls-creds "$PKI/cli" src.qcow2 "$U/t"
    [ "$status" -eq 0 ] || fail "mirror: $stderr"
    BLOCKCTL_TLS_CREDS=$PKI/cli run -0 "${CLI[@]}" "$PROG" compare src.qcow2 "$U/t"
    qnbd_down
    run -0 qemu-img compare src.qcow2 t.qcow2
    run -0 qemu-img check t.qcow2
}

@test "qemu-nbd --tls-creds: a wrong client certificate is refused on both sides" {
    qemu-img create -q -f raw t.raw 4M
    qnbd_up --object "tls-creds-x509,id=tls0,endpoint=server,dir=$PKI/srv" --tls-creds tls0 \
        -f raw -x t t.raw
    run --separate-stderr "${CLI[@]}" "$PROG" info --tls-creds "$PKI/othercli" "$U/t"
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    one_line_error "$U/t"
    run --separate-stderr "${CLI[@]}" "$PROG" info --tls-creds "$PKI/untrusting" "$U/t"
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    one_line_error "$U/t"
    [[ $stderr == *certificate* ]] || fail "$stderr"
    # a clear blockctl: qemu-nbd requires TLS
    run --separate-stderr "${CLI[@]}" "$PROG" info "nbd://$SRV_IP:$PORT/t"
    [ "$status" -eq 1 ] || fail "exit $status: $stderr"
    one_line_error "nbd://$SRV_IP:$PORT/t"
    grep -qi "certificate\|issuer" qemu-nbd.log || fail "qemu-nbd: $(cat qemu-nbd.log)"
}

@test "qemu-nbd with a tls-creds-psk: blockctl --tls-psk mirrors into it; another key is refused" {
    mkq src.qcow2 16M
    qio src.qcow2 'write -P 0x41 0 4M'
    qemu-img create -q -f raw t.raw 16M
    qnbd_up --object "tls-creds-psk,id=tls0,endpoint=server,dir=$PKI/psk" --tls-creds tls0 \
        -f raw -x t t.raw
    run --separate-stderr "${CLI[@]}" "$PROG" mirror --tls-psk "$PKI/psk/keys.psk" src.qcow2 "$U/t"
    [ "$status" -eq 0 ] || fail "mirror: $stderr"
    BLOCKCTL_TLS_PSK=$PKI/psk/keys.psk run -0 "${CLI[@]}" "$PROG" compare src.qcow2 "$U/t"
    run --separate-stderr "${CLI[@]}" "$PROG" compare --tls-psk "$PKI/otherpsk/keys.psk" \
        src.qcow2 "$U/t"
    [ "$status" -eq 2 ] || fail "exit $status: $stderr"
    one_line_error "$U/t"
    qnbd_down
    run -0 qemu-img compare -F raw src.qcow2 t.raw
}

# ---------------------------------------------------------------- options

@test "TLS options: wrong combinations exit 64, missing credentials are one-line errors" {
    make_disk
    run --separate-stderr "$PROG" info --tls-creds "$PKI/cli" --tls-psk "$PKI/psk/keys.psk" x
    [ "$status" -eq 64 ] || fail "client both: $status"
    run --separate-stderr "$PROG" agent --nbd "unix:$PWD/s" --disk "vda=$PWD/disk.raw" --tls=on
    [ "$status" -eq 64 ] || fail "agent --tls=on alone: $status"
    run --separate-stderr "$PROG" agent --nbd "unix:$PWD/s" --disk "vda=$PWD/disk.raw" \
        --tls=off --tls-creds "$PKI/srv"
    [ "$status" -eq 64 ] || fail "agent --tls=off with credentials: $status"
    run --separate-stderr "$PROG" agent --nbd "unix:$PWD/s" --disk "vda=$PWD/disk.raw" \
        --tls=maybe --tls-creds "$PKI/srv"
    [ "$status" -eq 64 ] || fail "agent --tls=maybe: $status"
    # a server directory without its key, a malformed PSK file
    mkdir half
    cp "$PKI/srv/ca-cert.pem" "$PKI/srv/server-cert.pem" half/
    run --separate-stderr timeout 20 "$PROG" agent --nbd "unix:$PWD/s" \
        --disk "vda=$PWD/disk.raw" --tls-creds "$PWD/half"
    [ "$status" -eq 1 ] || fail "agent without server-key.pem: $status"
    [[ $stderr == *server-key.pem* ]] || fail "$stderr"
    echo 'qemu:nothex' >bad.psk
    run --separate-stderr timeout 20 "$PROG" agent --nbd "unix:$PWD/s" \
        --disk "vda=$PWD/disk.raw" --tls-psk "$PWD/bad.psk"
    [ "$status" -eq 1 ] || fail "agent with a bad PSK file: $status"
    [[ $stderr == *"bad.psk"*"line 1"* ]] || fail "$stderr"
    run --separate-stderr "$PROG" info --tls-creds "$PWD/nowhere" "nbds://$SRV_IP:$PORT/vda"
    [ "$status" -eq 1 ] || fail "client without credentials: $status"
    one_line_error "$PWD/nowhere"
}

@test "the network the tests above used" {
    # a record for the log: two namespaces joined by veth, or loopback TCP
    # (ip netns needs root and a kernel that allows it)
    echo "# NBD over TLS tested across: $MODE ($SRV_IP)" >&3
    [ "$MODE" = netns ] || [ "$MODE" = loopback ]
}
