# Helpers of the live-job suites (tests/interop/agent-jobs*.bats): the
# same chain served by blockctl agent or qemu-storage-daemon, QMP scripts
# (tests/tools/qmp-script.py) and a guest writer with a model
# (tests/tools/guest-model.py).
# SPDX-License-Identifier: GPL-2.0-or-later

PY=/usr/bin/python3
TOOLS=$BATS_TEST_DIRNAME/../tools

# setup: what the suites need, and the test's folder
jobs_setup() {
    requires_qemu
    requires_cmd qemu-storage-daemon
    "$PY" -c 'import nbd' 2>/dev/null || skip "no python3 nbd module"
    cd "$BATS_TEST_TMPDIR" || return 1
}

# the chain: base.qcow2 (data 0-32M) <- mid.qcow2 (1M-9M) <- top.qcow2 (0-64k)
mkchain() {
    qemu-img create -q -f qcow2 base.qcow2 64M &&
        qio base.qcow2 'write -P 1 0 32M' &&
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 &&
        qio mid.qcow2 'write -P 2 1M 8M' 'write -z 20M 1M' &&
        qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 &&
        qio top.qcow2 'write -P 3 0 64k' &&
        qemu-img convert -O raw top.qcow2 before.raw
}

# serve blockctl|qsd: the chain as disk vda (nodes vda-1, vda-2 below the
# top, as the agent names them); sets S (QMP socket) and URI
serve() {
    S=$(sock_path qmp)
    local nbd
    nbd=$(sock_path nbd)
    echo "$BATS_TEST_TMPDIR/server.pid" >>"$BATS_TEST_TMPDIR/.servers"
    if [ "$1" = blockctl ]; then
        "$PROG" agent --qmp "$S" --nbd "unix:$nbd" --disk vda=top.qcow2 \
            --daemonize --pidfile "$BATS_TEST_TMPDIR/server.pid" 3>&- ||
            { fail "the agent did not start"; return 1; }
    else
        qemu-storage-daemon \
            --blockdev driver=file,filename=base.qcow2,node-name=base-file \
            --blockdev driver=qcow2,file=base-file,node-name=vda-2 \
            --blockdev driver=file,filename=mid.qcow2,node-name=mid-file \
            --blockdev driver=qcow2,file=mid-file,node-name=vda-1,backing=vda-2 \
            --blockdev driver=file,filename=top.qcow2,node-name=top-file \
            --blockdev driver=qcow2,file=top-file,node-name=vda,backing=vda-1 \
            --nbd-server addr.type=unix,addr.path="$nbd" \
            --export type=nbd,id=vda,node-name=vda,name=vda,writable=on \
            --chardev socket,path="$S",server=on,wait=off,id=qmp0 --monitor chardev=qmp0 \
            --daemonize --pidfile "$BATS_TEST_TMPDIR/server.pid" 3>&- ||
            { fail "qemu-storage-daemon did not start"; return 1; }
    fi
    URI="nbd+unix:///vda?socket=$nbd"
}

stop_server() {
    server_stop "$BATS_TEST_TMPDIR/server.pid"
}

script() {
    timeout 60 "$PY" "$TOOLS/qmp-script.py" "$S" "$@"
}

# guest_up blockctl|qsd: fresh images served, a guest writing (BG_PID) at
# GUEST_RATE writes per second (400 unless set)
guest_up() {
    rm -f ./*.qcow2 stop && mkchain && serve "$1" || return 1
    bg_start w.out w.err "$PY" "$TOOLS/guest-model.py" write "$URI" model.json \
        --rate "${GUEST_RATE:-400}" --seconds 60 --stop-file stop --span $((48 << 20)) \
        --log log.txt
    sleep 0.5
}

