#!/usr/bin/env bats
# Live jobs through QMP, on blockctl agent and on qemu-storage-daemon 7.2
# with the same disks: the same script gives the same replies and events
# (tests/tools/qmp-script.py prints them, without what depends on timing),
# and a live stream under a guest writer (tests/tools/guest-model.py) ends
# with every acknowledged write in the image, on both servers.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
load ../jobs-helpers
bats_require_minimum_version 1.5.0

setup() {
    jobs_setup
}

teardown() {
    copy_teardown
}

# the same QMP script on both servers, fresh images each time
both() {
    local f
    for f in blockctl qsd; do
        rm -f ./*.qcow2 && mkchain && serve $f || return 1
        script <"$1" >"out.$f" || { fail "$f: $(cat "out.$f")"; return 1; }
        stop_server
        qemu-img info -U top.qcow2 | grep '^backing file:' >"backing.$f" || true
        qemu-img compare -q before.raw top.qcow2 || { fail "$f: top.qcow2 changed its view"; return 1; }
        check_ok top.qcow2
    done
    diff -u out.qsd out.blockctl || fail "the agent's answers differ from qemu-storage-daemon's"
    diff -u backing.qsd backing.blockctl || fail "backing files differ"
}

@test "block-stream and the job verbs: the agent answers as qemu-storage-daemon does" {
    cat >s.qmp <<'EOF'
block-stream {"device": "nodev"}
block-stream {"device": "vda", "base": "nothere.qcow2"}
block-stream {"device": "vda", "base-node": "nothere"}
block-stream {"device": "vda", "base": "x", "base-node": "y"}
block-stream {"device": "vda", "job-id": "1x"}
block-stream {"device": "vda", "job-id": "j0", "speed": -1}
block-stream {"device": "vda", "job-id": "j1", "speed": 1048576}
block-stream {"device": "vda", "job-id": "j2"}
block-job-set-speed {"device": "j1", "speed": -5}
block-job-set-speed {"device": "nojob", "speed": 5}
block-job-pause {"device": "nojob"}
job-pause {"id": "nojob"}
block-job-finalize {"id": "nojob"}
job-dismiss {"id": "nojob"}
block-job-complete {"device": "j1"}
block-job-resume {"device": "j1"}
block-job-pause {"device": "j1"}
block-job-pause {"device": "j1"}
wait JOB_STATUS_CHANGE id=j1 status=paused
block-job-finalize {"id": "j1"}
block-job-dismiss {"id": "j1"}
block-job-cancel {"device": "j1"}
block-job-resume {"device": "j1"}
wait JOB_STATUS_CHANGE id=j1 status=running
block-job-set-speed {"device": "j1", "speed": 2097152}
block-job-cancel {"device": "j1"}
wait JOB_STATUS_CHANGE id=j1 status=null
query-block-jobs
block-stream {"device": "vda", "job-id": "j3", "base-node": "vda-2", "auto-finalize": false, "auto-dismiss": false}
wait BLOCK_JOB_PENDING id=j3
query-jobs
query-block-jobs
job-dismiss {"id": "j3"}
job-finalize {"id": "j3"}
wait JOB_STATUS_CHANGE id=j3 status=concluded
query-jobs
job-dismiss {"id": "j3"}
wait JOB_STATUS_CHANGE id=j3 status=null
query-jobs
EOF
    both s.qmp
    # the last stream kept base.qcow2 below top.qcow2
    grep -q 'backing file: base.qcow2' backing.blockctl || fail "$(cat backing.blockctl)"
    grep -q '"error"' out.blockctl
    grep -q 'BLOCK_JOB_CANCELLED' out.blockctl
}

@test "block-stream without a base: the top stands alone, on both servers" {
    cat >s.qmp <<'EOF'
block-stream {"device": "vda", "job-id": "s"}
wait JOB_STATUS_CHANGE id=s status=null
query-block-jobs
EOF
    both s.qmp
    [ ! -s backing.blockctl ] || fail "top.qcow2 still has $(cat backing.blockctl)"
    grep -q 'BLOCK_JOB_COMPLETED' out.blockctl
}

# live_stream blockctl|qsd ARGS-JSON: stream while the guest writes; then
# every acknowledged write is in top.qcow2 and the rest reads as before
live_stream() {
    local writer
    guest_up "$1" || return 1
    writer=$BG_PID
    script >s.out <<EOF || { fail "$(cat s.out)"; return 1; }
block-stream $2
wait JOB_STATUS_CHANGE id=s status=null
EOF
    touch stop
    bg_wait "$writer" 30
    [ "$BG_STATUS" -eq 0 ] || { fail "the writer: $BG_STATUS $(cat w.out w.err)"; return 1; }
    grep -q BLOCK_JOB_COMPLETED s.out || { fail "$(cat s.out)"; return 1; }
    stop_server
    "$PY" "$TOOLS/guest-model.py" expect before.raw model.json expect.raw
    qemu-img compare expect.raw top.qcow2 || fail "$1: top.qcow2 lost an acknowledged write ($(cat w.out))"
    check_ok top.qcow2
    [ "$(jq .writes <w.out)" -gt 50 ] || fail "too few writes: $(cat w.out)"
}

@test "live stream under guest writes: every acknowledged write is in the top, on both servers" {
    live_stream blockctl '{"device": "vda", "job-id": "s", "speed": 33554432}'
    [ -z "$(qemu-img info top.qcow2 | grep '^backing file')" ] || fail "still backed"
    live_stream qsd '{"device": "vda", "job-id": "s", "speed": 33554432}'
}

@test "live stream --base-node under guest writes keeps the base" {
    live_stream blockctl '{"device": "vda", "job-id": "s", "base-node": "vda-2"}'
    qemu-img info top.qcow2 | grep -q '^backing file: base.qcow2' ||
        fail "$(qemu-img info top.qcow2)"
}

@test "a job's disk refuses a live snapshot until the job ends; quit cancels a running job" {
    mkchain && serve blockctl
    script >s.out <<'EOF'
block-stream {"device": "vda", "job-id": "s", "speed": 65536}
blockdev-snapshot-sync {"device": "vda", "snapshot-file": "snap.qcow2", "format": "qcow2"}
EOF
    grep -q "Node 'vda' is busy: block device is in use by block job: stream" s.out ||
        fail "$(cat s.out)"
    [ ! -e snap.qcow2 ]
    local pid
    pid=$(cat server.pid)
    "$PY" "$BATS_TEST_DIRNAME/qmp-talk.py" "$S" '{"execute": "quit"}' >q.out
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    ! kill -0 "$pid" 2>/dev/null || fail "the agent did not stop"
    qemu-img compare -q before.raw top.qcow2
    qemu-img info top.qcow2 | grep -q '^backing file: mid.qcow2'
    check_ok top.qcow2
}

@test "drive-mirror: errors, then a mirror to READY and a pivot: the agent answers as qemu-storage-daemon does" {
    cat >s.qmp <<EOF2
drive-mirror {"device": "nodev", "target": "$PWD/t.qcow2", "sync": "full"}
drive-mirror {"device": "vda", "target": "$PWD/t.qcow2", "sync": "full", "granularity": 1000}
drive-mirror {"device": "vda", "target": "$PWD/t.qcow2", "sync": "full", "granularity": 256}
drive-mirror {"device": "vda", "target": "$PWD/t.qcow2", "sync": "full", "buf-size": -1}
drive-mirror {"device": "vda", "target": "$PWD/nothere.qcow2", "sync": "full", "mode": "existing"}
drive-mirror {"device": "vda", "target": "$PWD/t.qcow2", "sync": "full", "format": "nosuch"}
drive-mirror {"device": "vda", "target": "$PWD/t.qcow2", "sync": "full", "job-id": "m1", "speed": -1}
drive-mirror {"device": "vda", "target": "$PWD/t.qcow2", "sync": "top", "job-id": "m1", "format": "qcow2"}
wait BLOCK_JOB_READY device=m1
block-job-complete {"device": "m1"}
wait JOB_STATUS_CHANGE id=m1 status=null
query-block-jobs
EOF2
    local f
    for f in blockctl qsd; do
        rm -f ./*.qcow2 && mkchain && serve $f || return 1
        script <s.qmp >"out.$f" || { fail "$f: $(cat "out.$f")"; return 1; }
        stop_server
        qemu-img compare -q before.raw t.qcow2 || fail "$f: the target does not read as the disk"
        qemu-img info t.qcow2 | grep -q "^backing file: mid.qcow2" || fail "$f: $(qemu-img info t.qcow2)"
        check_ok t.qcow2
    done
    diff -u out.qsd out.blockctl || fail "the agent's answers differ from qemu-storage-daemon's"
}

# live_mirror blockctl|qsd SYNC COPY-MODE complete|cancel: mirror under a
# guest writer, to READY, then pivot (complete) or finish without (cancel)
live_mirror() {
    local writer
    guest_up "$1" || return 1
    writer=$BG_PID
    script >s.out <<EOF2 || { fail "$(cat s.out)"; return 1; }
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "$2", "copy-mode": "$3"}
wait BLOCK_JOB_READY device=m
sleep 0.5
block-job-$4 {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=null
EOF2
    sleep 0.5
    touch stop
    bg_wait "$writer" 30
    [ "$BG_STATUS" -eq 0 ] || { fail "the writer: $BG_STATUS $(cat w.out w.err)"; return 1; }
    grep -q BLOCK_JOB_COMPLETED s.out || { fail "$(cat s.out)"; return 1; }
    stop_server
    "$PY" "$TOOLS/guest-model.py" expect before.raw model.json expect.raw
    if [ "$4" = complete ]; then
        # every write, before and after the pivot, is in the target
        qemu-img compare expect.raw t.qcow2 || fail "$1: t.qcow2 lost an acknowledged write ($(cat w.out))"
    else
        qemu-img compare expect.raw top.qcow2 || fail "$1: top.qcow2 lost an acknowledged write ($(cat w.out))"
    fi
    check_ok top.qcow2 t.qcow2
}

@test "live mirror + pivot under guest writes: every acknowledged write is in the target, on both servers" {
    live_mirror blockctl full background complete
    live_mirror qsd full background complete
}

@test "live mirror sync=top, write-blocking, + pivot: the target keeps the source's backing" {
    live_mirror blockctl top write-blocking complete
    qemu-img info t.qcow2 | grep -q "^backing file: mid.qcow2" || fail "$(qemu-img info t.qcow2)"
}

@test "live mirror cancelled once ready: no pivot, the disk keeps every write, on both servers" {
    live_mirror blockctl full background cancel
    live_mirror qsd full background cancel
}

@test "the target's NBD server dies mid-mirror: the job fails, the guest goes on, the disk stays" {
    mkchain && serve blockctl
    qemu-img create -q -f raw t.raw 64M
    nbd_serve tgt -f raw t.raw
    script >s2.out <<EOF2
drive-mirror {"device": "vda", "job-id": "m", "target": "$NBD_URI", "format": "raw", "mode": "existing", "sync": "full", "speed": 4194304}
sleep 0.5
run kill -9 \$(cat $NBD_PIDFILE)
wait JOB_STATUS_CHANGE id=m status=null
query-block-jobs
EOF2
    grep -q 'BLOCK_JOB_COMPLETED.*"error"' s2.out || fail "$(cat s2.out)"
    # the guest still writes and reads, on the source
    qemu-io -f raw -c 'write -P 0x5a 1M 64k' -c 'read -P 0x5a 1M 64k' "$URI" >/dev/null
    stop_server
    qemu-img info top.qcow2 | grep -q '^backing file: mid.qcow2'
    check_ok top.qcow2
}

@test "block-commit: errors, an intermediate commit, then an active commit and its pivot: as qemu-storage-daemon" {
    cat >s.qmp <<'EOF2'
block-commit {"device": "nodev"}
block-commit {"device": "vda", "top-node": "nothere"}
block-commit {"device": "vda", "base-node": "nothere"}
block-commit {"device": "vda", "top-node": "vda-2", "base-node": "vda-1"}
block-commit {"device": "vda", "top-node": "vda-1", "base-node": "vda-1"}
block-commit {"device": "vda", "top": "x", "top-node": "vda-1"}
block-commit {"device": "vda", "base": "x", "base-node": "vda-1"}
block-commit {"device": "vda", "base": "nothere.qcow2"}
block-commit {"device": "vda", "top": "nothere.qcow2"}
block-commit {"device": "vda", "job-id": "c1", "top-node": "vda-1"}
wait JOB_STATUS_CHANGE id=c1 status=null
block-commit {"device": "vda", "job-id": "c2"}
wait BLOCK_JOB_READY device=c2
query-block-jobs
block-job-complete {"device": "c2"}
wait JOB_STATUS_CHANGE id=c2 status=null
query-block-jobs
EOF2
    local f
    for f in blockctl qsd; do
        rm -f ./*.qcow2 && mkchain && serve $f || return 1
        script <s.qmp >"out.$f" || { fail "$f: $(cat "out.$f")"; return 1; }
        # the disk now writes into base.qcow2
        qemu-io -f raw -c 'write -P 0x42 2M 64k' "$URI" >/dev/null
        stop_server
        qemu-img info top.qcow2 | grep -q '^backing file: base.qcow2' || fail "$f: $(qemu-img info top.qcow2)"
        cp before.raw exp.raw
        QIO_FMT=raw qio exp.raw 'write -P 0x42 2M 64k'
        qemu-img compare exp.raw base.qcow2 || fail "$f: base.qcow2 does not hold the disk"
        check_ok base.qcow2 top.qcow2
    done
    diff -u out.qsd out.blockctl || fail "the agent's answers differ from qemu-storage-daemon's"
}

@test "live active commit under guest writes, then pivot: every acknowledged write is in the base" {
    local writer
    guest_up blockctl || return 1
    writer=$BG_PID
    script >s.out <<'EOF2' || { fail "$(cat s.out)"; return 1; }
block-commit {"device": "vda", "job-id": "c"}
wait BLOCK_JOB_READY device=c
sleep 0.5
block-job-complete {"device": "c"}
wait JOB_STATUS_CHANGE id=c status=null
EOF2
    sleep 0.5
    touch stop
    bg_wait "$writer" 30
    [ "$BG_STATUS" -eq 0 ] || { fail "the writer: $(cat w.out w.err)"; return 1; }
    grep -q BLOCK_JOB_COMPLETED s.out || { fail "$(cat s.out)"; return 1; }
    stop_server
    "$PY" "$TOOLS/guest-model.py" expect before.raw model.json expect.raw
    qemu-img compare expect.raw base.qcow2 || fail "base.qcow2 lost an acknowledged write ($(cat w.out))"
    check_ok base.qcow2
}

# mirror_script SCRIPT: under a guest writer, run the QMP script, stop the
# writer, then every acknowledged write must be in t.qcow2 (pivoted)
mirror_script() {
    local writer
    guest_up blockctl || return 1
    writer=$BG_PID
    script >s.out <"$1" || { fail "$(cat s.out)"; return 1; }
    sleep 0.5
    touch stop
    bg_wait "$writer" 30
    [ "$BG_STATUS" -eq 0 ] || { fail "the writer: $(cat w.out w.err)"; return 1; }
    stop_server
    "$PY" "$TOOLS/guest-model.py" expect before.raw model.json expect.raw
    qemu-img compare expect.raw t.qcow2 || fail "t.qcow2 lost an acknowledged write ($(cat w.out))"
    check_ok t.qcow2
}

@test "a ready mirror that falls behind is ready no more, then ready again; complete is refused meanwhile" {
    cat >m.qmp <<EOF2
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full"}
wait BLOCK_JOB_READY device=m
block-job-set-speed {"device": "m", "speed": 65536}
wait JOB_STATUS_CHANGE id=m status=running
block-job-complete {"device": "m"}
block-job-set-speed {"device": "m", "speed": 0}
wait BLOCK_JOB_READY device=m
block-job-complete {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=null
EOF2
    mirror_script m.qmp
    grep -q "Job 'm' in state 'running' cannot accept command verb 'complete'" s.out || fail "$(cat s.out)"
    [ "$(grep -c '^BLOCK_JOB_READY' s.out)" -eq 2 ] || fail "$(cat s.out)"
    ! grep -q '! timed out' s.out || fail "$(cat s.out)"
}

@test "copy-mode auto: a guest faster than the copy turns the mirror write-blocking, and it converges" {
    cat >m.qmp <<EOF2
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full", "copy-mode": "auto"}
wait BLOCK_JOB_READY device=m
block-job-set-speed {"device": "m", "speed": 16384}
wait BLOCKCTL_JOB_COPY_MODE device=m copy-mode=write-blocking
query-block-jobs
block-job-set-speed {"device": "m", "speed": 0}
sleep 1
wait BLOCK_JOB_READY device=m
block-job-complete {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=null
EOF2
    mirror_script m.qmp
    grep -q '"copy-mode": "write-blocking"' s.out || fail "$(cat s.out)"
    ! grep -q '! timed out' s.out || fail "$(cat s.out)"
}

# two disks, vda (the chain) and vdb, each with a guest writer (W1, W2)
two_disks_up() {
    mkchain && qemu-img create -q -f qcow2 b.qcow2 64M && qio b.qcow2 'write -P 7 0 16M' &&
        qemu-img convert -O raw b.qcow2 b-before.raw || return 1
    S=$(sock_path qmp)
    local nbd
    nbd=$(sock_path nbd)
    echo "$BATS_TEST_TMPDIR/server.pid" >>"$BATS_TEST_TMPDIR/.servers"
    "$PROG" agent --qmp "$S" --nbd "unix:$nbd" --disk vda=top.qcow2 --disk vdb=b.qcow2 \
        --state state.json --daemonize --pidfile "$BATS_TEST_TMPDIR/server.pid" 3>&- ||
        { fail "the agent did not start"; return 1; }
    bg_start w1.out w1.err "$PY" "$TOOLS/guest-model.py" write "nbd+unix:///vda?socket=$nbd" \
        m1.json --rate 300 --seconds 60 --stop-file stop --span $((48 << 20))
    W1=$BG_PID
    bg_start w2.out w2.err "$PY" "$TOOLS/guest-model.py" write "nbd+unix:///vdb?socket=$nbd" \
        m2.json --rate 300 --seconds 60 --stop-file stop --span $((48 << 20))
    W2=$BG_PID
    sleep 0.5
}

# the writers stop; every acknowledged write of vda is in $1, of vdb in $2
two_disks_check() {
    touch stop
    bg_wait "$W1" 30
    [ "$BG_STATUS" -eq 0 ] || { fail "writer 1: $(cat w1.out w1.err)"; return 1; }
    bg_wait "$W2" 30
    [ "$BG_STATUS" -eq 0 ] || { fail "writer 2: $(cat w2.out w2.err)"; return 1; }
    stop_server
    "$PY" "$TOOLS/guest-model.py" expect before.raw m1.json e1.raw &&
        "$PY" "$TOOLS/guest-model.py" expect b-before.raw m2.json e2.raw || return 1
    qemu-img compare -q e1.raw "$1" || { fail "vda: $1 lost an acknowledged write"; return 1; }
    qemu-img compare -q e2.raw "$2" || { fail "vdb: $2 lost an acknowledged write"; return 1; }
    check_ok "$1" "$2"
}

@test "grouped pivot: two disks switch in one transaction of block-job-complete actions, all or none" {
    two_disks_up || return 1
    script >s.out <<EOF2 || fail "$(cat s.out)"
drive-mirror {"device": "vda", "job-id": "m1", "target": "$PWD/t1.qcow2", "format": "qcow2", "sync": "full"}
drive-mirror {"device": "vdb", "job-id": "m2", "target": "$PWD/t2.qcow2", "format": "qcow2", "sync": "full", "speed": 1048576}
wait BLOCK_JOB_READY device=m1
transaction {"actions": [{"type": "block-job-complete", "data": {"device": "m1"}}, {"type": "block-job-complete", "data": {"device": "m2"}}]}
transaction {"actions": [{"type": "block-job-complete", "data": {"device": "m1"}}, {"type": "block-dirty-bitmap-add", "data": {"node": "vda", "name": "b"}}]}
transaction {"actions": [{"type": "block-job-complete", "data": {"device": "m1"}}, {"type": "block-job-complete", "data": {"device": "nojob"}}]}
transaction {"actions": [{"type": "block-job-complete", "data": {"device": "m1"}}, {"type": "block-job-complete", "data": {"device": "m1"}}]}
query-block-jobs
block-job-set-speed {"device": "m2", "speed": 0}
wait BLOCK_JOB_READY device=m2
transaction {"actions": [{"type": "block-job-complete", "data": {"device": "m1"}}, {"type": "block-job-complete", "data": {"device": "m2"}}]}
waitany JOB_STATUS_CHANGE id=m1 status=null
waitany JOB_STATUS_CHANGE id=m2 status=null
query-block
EOF2
    # m2 not ready yet: refused, and nothing moved
    grep -q "Job 'm2' in state 'running' cannot accept command verb 'complete'" s.out || fail "$(cat s.out)"
    grep -q "cannot be in a transaction with block-job-complete" s.out || fail "$(cat s.out)"
    grep -q "Block job 'nojob' not found" s.out || fail "$(cat s.out)"
    grep -q "Job 'm1' is named twice" s.out || fail "$(cat s.out)"
    [ "$(grep -c '^BLOCK_JOB_COMPLETED' s.out)" -eq 2 ] || fail "$(cat s.out)"
    # both disks on their targets, in the graph and the state file
    grep -q "t1.qcow2" state.json && grep -q "t2.qcow2" state.json || fail "$(cat state.json)"
    two_disks_check t1.qcow2 t2.qcow2
}

@test "pivot vda vdb: the CLI pivots two disks of an agent together; one not ready: neither moves" {
    two_disks_up || return 1
    "$PROG" mirror --agent "$S" vda "$PWD/t1.qcow2" -O qcow2
    "$PROG" mirror --agent "$S" vdb "$PWD/t2.qcow2" -O qcow2 --bandwidth 1M
    "$PROG" job --agent "$S" wait vda
    run "$PROG" pivot --agent "$S" vda vdb
    [ "$status" -eq 1 ] || fail "$status: $output"
    [[ "$output" == *"job 'vdb' is not ready"* ]] || fail "$output"
    "$PROG" job --agent "$S" set-speed vdb 0
    run timeout 60 "$PROG" pivot --agent "$S" --wait --timeout 50 vda vdb
    [ "$status" -eq 0 ] || fail "$status: $output"
    [[ "$output" == *"'vda' pivoted"*"'vdb' pivoted"* ]] || fail "$output"
    two_disks_check t1.qcow2 t2.qcow2
}

@test "blockdev-add, blockdev-mirror to that node, pivot, blockdev-del: as qemu-storage-daemon" {
    cat >s.qmp <<EOF2
run qemu-img create -q -f qcow2 $PWD/t.qcow2 64M
run qemu-img create -q -f raw $PWD/r.raw 64M
blockdev-add {"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": "$PWD/t.qcow2"}}
blockdev-add {"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": "$PWD/t.qcow2"}}
blockdev-add {"driver": "qcow2", "file": {"driver": "file", "filename": "$PWD/t.qcow2"}}
blockdev-add {"driver": "file", "node-name": "nf", "filename": "$PWD/nothere"}
blockdev-add {"driver": "nosuch", "node-name": "y"}
blockdev-add {"driver": "qcow2", "node-name": "x", "file": "nonode"}
blockdev-add {"driver": "file", "node-name": "rf", "filename": "$PWD/r.raw"}
blockdev-add {"driver": "raw", "node-name": "r", "file": "rf"}
blockdev-add {"driver": "raw", "node-name": "x", "file": "rf", "bogus": 1}
blockdev-mirror {"device": "vda", "job-id": "m", "target": "nonode", "sync": "full"}
blockdev-mirror {"device": "vda", "job-id": "m", "target": "vda", "sync": "full"}
blockdev-mirror {"device": "vda", "job-id": "m", "target": "tgt", "sync": "bitmap"}
blockdev-mirror {"device": "vda", "job-id": "m", "target": "tgt", "sync": "full", "format": "raw"}
blockdev-del {"node-name": "nonode"}
blockdev-del {"node-name": "rf"}
blockdev-del {"node-name": "r"}
blockdev-del {"node-name": "rf"}
blockdev-mirror {"device": "vda", "job-id": "m", "target": "tgt", "sync": "full"}
blockdev-del {"node-name": "tgt"}
wait BLOCK_JOB_READY device=m
block-job-complete {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=null
EOF2
    both s.qmp
    # the disk ended on the node's image, with everything
    qemu-img compare -q before.raw t.qcow2 || fail "t.qcow2 differs"
    check_ok t.qcow2
    grep -q "Duplicate nodes with node-name='tgt'" out.blockctl || fail "$(cat out.blockctl)"
}

@test "live sync=bitmap (blockctl's): an incremental mirror into the last full copy, then pivot; clear-bitmap" {
    guest_up blockctl || return 1
    local writer=$BG_PID
    script >s.out <<EOF2 || fail "$(cat s.out)"
block-dirty-bitmap-add {"node": "vda", "name": "b", "persistent": true}
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/full.qcow2", "format": "qcow2", "sync": "full"}
wait BLOCK_JOB_READY device=m
block-job-cancel {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=null
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/x.qcow2", "sync": "bitmap", "bitmap": "b"}
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/x.qcow2", "sync": "full", "bitmap": "b"}
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/x.qcow2", "sync": "bitmap", "bitmap": "nob", "mode": "existing"}
EOF2
    grep -q "mode 'existing'" s.out || fail "$(cat s.out)"
    grep -q "Parameter 'bitmap' goes with sync mode 'bitmap'" s.out || fail "$(cat s.out)"
    [ "$(grep -c '"error"' s.out)" -eq 3 ] || fail "$(cat s.out)"
    cp full.qcow2 inc.qcow2
    sleep 1
    run "$PROG" mirror --agent "$S" --sync=bitmap --bitmap b --clear-bitmap -n -O qcow2 \
        --wait --pivot vda "$PWD/inc.qcow2"
    [ "$status" -eq 0 ] || fail "$status: $output"
    # the bitmap went along, cleared at the switch: it holds only the writes since
    local after
    after=$("$PY" "$BATS_TEST_DIRNAME/qmp-talk.py" "$S" '{"execute": "query-block"}' |
        grep -o '"count": [0-9]*' | head -1 | grep -o '[0-9]*')
    [ -n "$after" ] && [ "$after" -lt $((8 << 20)) ] || fail "bitmap count after: $after"
    sleep 0.5
    touch stop
    bg_wait "$writer" 30
    [ "$BG_STATUS" -eq 0 ] || fail "the writer: $(cat w.out w.err)"
    stop_server
    "$PY" "$TOOLS/guest-model.py" expect before.raw model.json expect.raw
    # the last full copy plus the bitmap's regions: every acknowledged write
    qemu-img compare -q expect.raw inc.qcow2 || fail "inc.qcow2 lost an acknowledged write"
    check_ok inc.qcow2 full.qcow2
}

@test "live stream into an image below the top (vda-1 = mid.qcow2) under guest writes, on both servers" {
    local f
    for f in blockctl qsd; do
        live_stream $f '{"device": "vda-1", "job-id": "s", "speed": 33554432}' || return 1
        # mid holds the base's data now and stands alone; the top still sits on it
        [ -z "$(qemu-img info mid.qcow2 | grep '^backing file')" ] || fail "$f: mid still backed"
        qemu-img info top.qcow2 | grep -q '^backing file: mid.qcow2' || fail "$f: top relinked"
        ! qemu-io -r -f qcow2 -c 'read -P 1 0 1M' -c 'read -P 1 24M 8M' mid.qcow2 | grep -q Pattern ||
            fail "$f: the base's data is not in mid"
        check_ok mid.qcow2
    done
}

@test "write-blocking from the start: a guest write where the copy is done reaches the target before READY, on both servers" {
    local f
    # the guest's 64 KiB of byte 90 ('Z'), read from the raw target with
    # cmp: QEMU keeps others' consistent reads off its unfinished target
    head -c 65536 /dev/zero | tr '\0' Z >pattern
    for f in blockctl qsd; do
        rm -f ./*.qcow2 t.raw marks && mkchain && serve $f || return 1
        cat >s.qmp <<EOF2
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.raw", "format": "raw", "sync": "full", "copy-mode": "write-blocking", "speed": 8388608}
sleep 3
run qemu-io -f raw '$URI' -c 'write -P 90 0 64k' >/dev/null && echo written >>marks
run cmp -s -n 65536 pattern t.raw && echo target >>marks
query-block-jobs
block-job-set-speed {"device": "m", "speed": 0}
wait BLOCK_JOB_READY device=m
block-job-complete {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=null
EOF2
        script --keep-progress <s.qmp >"out.$f" || { fail "$f: $(cat "out.$f")"; return 1; }
        stop_server
        grep -q '"ready": false' "out.$f" || fail "$f: the copy was done before the write: $(cat "out.$f")"
        grep -qx written marks || fail "$f: the guest write failed"
        grep -qx target marks || fail "$f: the guest write was not on the target before READY"
        QIO_FMT=raw qio before.raw 'write -P 90 0 64k' >/dev/null
        qemu-img compare -q -f raw -F raw before.raw t.raw ||
            fail "$f: the target does not read as the disk"
        qemu-img convert -O raw top.qcow2 before.raw
    done
}
