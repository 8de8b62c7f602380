#!/usr/bin/env bats
# The live operations of the crash matrix (tests/crash/live.bash), sampled
# for `make check`: an agent killed (-9) at a few points of each live
# operation (snapshot, stream, active commit, mirror before and after
# READY, pivot) while a guest writes with flushes and FUA; after each,
# every image passes qemu-img check, the disk holds every write the guest
# was told is durable, `job list` names the job and that image, and job
# resume, job abort or a restarted agent end it as blockctl-job(1) says.
# The same with a power failure at a few points of each (the agent's
# write log replayed: what it synced and a random part of the rest).
# `make crash` runs every point.  Then the bugs the matrix found, each at
# its point, and the oracle's own check.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load bats-helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

# three points per operation (the first, one in the middle, the last)
K=${CRASH_LIVE_K:-75}

setup_file() {
    requires_cmd qemu-img qemu-io qemu-nbd nbdinfo python3 jq
    crash_root_make blockctl-crash-live
}

teardown_file() {
    crash_root_done
}

setup() {
    requires_cmd qemu-img qemu-io qemu-nbd nbdinfo python3 jq
    /usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "no python3 nbd module"
    "$PROG" agent --help >/dev/null 2>&1 || skip "no agent"
    export JOBS=${CRASH_JOBS:-${JOBS:-$(nproc 2>/dev/null || echo 2)}}
}

teardown() {
    [ -n "${APID:-}" ] && kill -KILL "$APID" 2>/dev/null
    [ -n "${WPID:-}" ] && kill "$WPID" 2>/dev/null
    copy_teardown
}

# sample OP [SWEEP [POINTS]]: the matrix at three of OP's points of the
# sweep SWEEP (any:kill), or at POINTS points spread over the operation;
# fails with its table and failures
sample() {
    local k=$K
    [ -n "${3:-}" ] && k=1
    run env CRASH_OWN_ROOT=0 PROG="$PROG" K=$k SWEEPS="${2:-any:kill}" \
        CRASH_LIVE_POINTS="${3:-${CRASH_LIVE_POINTS:-150}}" bash "$BATS_TEST_DIRNAME/matrix.sh" "$1" 3>&-
    [ "$status" -eq 0 ] || { fail "$output"; return 1; }
    awk '$1 != "operation" && $1 != "total" && NF == 8 && $3 == 0 { bad = 1 } END { exit bad }' \
        <<<"$output" || { fail "no kill fired: $output"; return 1; }
}

@test "crash matrix: live snapshot" { sample live-snapshot; }
@test "crash matrix: live stream" { sample live-stream; }
@test "crash matrix: live active commit" { sample live-commit; }
@test "crash matrix: live mirror (before READY)" { sample live-mirror; }
@test "crash matrix: live mirror (after READY)" { sample live-mirror-ready; }
@test "crash matrix: live pivot" { sample live-pivot; }

# power loss: four points of each (1, and a quarter, half and three
# quarters of the way), the unsynced writes kept or lost at random
PL=${CRASH_LIVE_PL:-4}
@test "crash matrix, power loss: live snapshot" { sample live-snapshot any:pl-r1 "$PL"; }
@test "crash matrix, power loss: live stream" { sample live-stream any:pl-r1 "$PL"; }
@test "crash matrix, power loss: live active commit" { sample live-commit any:pl-r1 "$PL"; }
@test "crash matrix, power loss: live mirror (before READY)" { sample live-mirror any:pl-r1 "$PL"; }
@test "crash matrix, power loss: live mirror (after READY)" { sample live-mirror-ready any:pl-r1 "$PL"; }
@test "crash matrix, power loss: live pivot" { sample live-pivot any:pl-r1 "$PL"; }

# ------------------------------------------------------------ single points

# up: the chain served by an agent (APID) with a state file and the
# fault command, a guest writing (WPID)
up() {
    cd "$BATS_TEST_TMPDIR" || return 1
    qemu-img create -q -f qcow2 base.qcow2 8M &&
        qemu-io -f qcow2 -c 'write -P 0x11 0 6M' base.qcow2 >/dev/null &&
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 &&
        qemu-img convert -O raw top.qcow2 view.raw || return 1
    Q=$(sock_path q)
    N=$(sock_path n)
    export BLOCKCTL_STATE_DIR=$BATS_TEST_TMPDIR/state
    env BLOCKCTL_FAULT='' "$PROG" agent --qmp "$Q" --nbd "unix:$N" --disk vda=top.qcow2 \
        --state "$PWD/st.json" --daemonize --pidfile a.pid 2>a.log 3>&- ||
        { fail "the agent did not start: $(cat a.log)"; return 1; }
    APID=$(cat a.pid)
    /usr/bin/python3 "$BATS_TEST_DIRNAME/../tools/guest-model.py" write "nbd+unix:///vda?socket=$N" \
        model.json --rate 200 --seconds 30 --stop-file stop --log log.txt --durable durable.txt \
        --flush-every 8 --fua-every 5 >w.out 2>w.err &
    WPID=$!
    sleep 0.3
}

# qmp_script: tests/tools/qmp-script.py on the agent (stdin: the script)
qmp_script() {
    timeout 60 /usr/bin/python3 "$BATS_TEST_DIRNAME/../tools/qmp-script.py" "$Q"
}

# killed: the agent is gone (the fault killed it); the guest stops
killed() {
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$APID" 2>/dev/null || break
        sleep 0.05
    done
    ! kill -0 "$APID" 2>/dev/null || { fail "the agent is still running"; return 1; }
    APID=''
    touch stop
    wait "$WPID" || true
    WPID=''
}

# holds IMG: IMG holds every write the guest was told is durable
holds() {
    qemu-img convert -U -O raw "$1" got.raw &&
        /usr/bin/python3 "$BATS_TEST_DIRNAME/../tools/guest-model.py" durable view.raw log.txt \
            durable.txt got.raw || fail "$1 lost durable writes"
}

@test "pivot killed once the state file names the target, its journal not yet removed: job list names the target authoritative" {
    up
    qmp_script >s.out <<EOF || true
drive-mirror {"device": "vda", "job-id": "j", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full"}
wait BLOCK_JOB_READY
x-blockctl-fault {"rules": "dirsync:1:kill:*st.json"}
block-job-complete {"device": "j"}
EOF
    killed
    [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/t.qcow2" ] || fail "st.json: $(cat st.json)"
    [ "$(ls state/jobs/*.json | wc -l)" = 1 ]
    run -0 "$PROG" job list --output=json
    [ "$(jq -r '.[0].authoritative' <<<"$output")" = "$PWD/t.qcow2" ] || fail "$output"
    [ "$(jq -r '.[0].state' <<<"$output")" = pivoted ] || fail "$output"
    run -0 "$PROG" job list
    [[ $output == *"pivoted"*"$PWD/t.qcow2"* ]] || fail "$output"
    holds t.qcow2
    run -0 "$PROG" job abort "$(jq -r '.[0].id' <<<"$("$PROG" job list --output=json)")"
    [[ $output == *"had pivoted: '$PWD/t.qcow2' holds disk vda"* ]] || fail "$output"
    run -0 "$PROG" job list
    [ "$output" = "No interrupted jobs" ]
}

@test "live snapshot killed while its overlay is written: no half-made overlay under its name; the restarted agent makes it again" {
    up
    qmp_script >s.out <<EOF || true
x-blockctl-fault {"rules": "pwrite:2:kill:*s.qcow2"}
blockdev-snapshot-sync {"device": "vda", "snapshot-file": "$PWD/s.qcow2", "format": "qcow2"}
EOF
    killed
    [ ! -e s.qcow2 ] || fail "s.qcow2 left: $(qemu-img check s.qcow2 2>&1)"
    [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/top.qcow2" ]
    holds top.qcow2
    "$PROG" agent --qmp "$Q" --state "$PWD/st.json" --daemonize --pidfile a.pid 2>a.log 3>&-
    APID=$(cat a.pid)
    run -0 qmp_script <<EOF
blockdev-snapshot-sync {"device": "vda", "snapshot-file": "$PWD/s.qcow2", "format": "qcow2"}
EOF
    [[ $output == *'{"return": {}}'* ]] || fail "$output"
    kill -TERM "$APID"
    [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/s.qcow2" ]
    qemu-img check -q s.qcow2
}

@test "drive-mirror killed while its target is made: no half-made target under its name" {
    up
    qmp_script >s.out <<EOF || true
x-blockctl-fault {"rules": "pwrite:2:kill:*t.qcow2"}
drive-mirror {"device": "vda", "job-id": "j", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full"}
EOF
    killed
    [ ! -e t.qcow2 ] || fail "t.qcow2 left: $(qemu-img check t.qcow2 2>&1)"
    run -0 "$PROG" job list
    [ "$output" = "No interrupted jobs" ]
    holds top.qcow2
}

@test "x-blockctl-fault is there only with BLOCKCTL_FAULT set, and counts the calls from where it was armed" {
    cd "$BATS_TEST_TMPDIR"
    qemu-img create -q -f qcow2 a.qcow2 1M
    Q=$(sock_path q)
    "$PROG" agent --qmp "$Q" --disk vda=a.qcow2 --daemonize --pidfile a.pid 2>a.log 3>&-
    APID=$(cat a.pid)
    run qmp_script <<<'x-blockctl-fault {"rules": ""}'
    [[ $output == *CommandNotFound* ]] || fail "$output"
    kill -TERM "$APID"
    while kill -0 "$APID" 2>/dev/null; do sleep 0.05; done
    env BLOCKCTL_FAULT='' "$PROG" agent --qmp "$Q" --disk vda=a.qcow2 --daemonize \
        --pidfile a.pid 2>a.log 3>&-
    APID=$(cat a.pid)
    run -0 qmp_script <<EOF
x-blockctl-fault {"rules": "pwrite:100:eio,sync:100:eio"}
blockdev-snapshot-sync {"device": "vda", "snapshot-file": "$BATS_TEST_TMPDIR/s.qcow2", "format": "qcow2"}
x-blockctl-fault {"rules": ""}
x-blockctl-fault {}
EOF
    # (the snapshot wrote and synced: both rules counted from 0, and none is left)
    [[ $output =~ \"counts\":\ \[([0-9]+),\ ([0-9]+)\] ]] || fail "$output"
    [ "${BASH_REMATCH[1]}" -gt 0 ] && [ "${BASH_REMATCH[1]}" -lt 100 ]
    [ "${BASH_REMATCH[2]}" -gt 0 ] && [ "${BASH_REMATCH[2]}" -lt 100 ]
    [[ $output == *'"counts": []'* ]] || fail "$output"
    kill -TERM "$APID"
}

@test "the live oracle sees a lost durable write, and a stale block" {
    cd "$BATS_TEST_TMPDIR"
    local py=/usr/bin/python3 gm=$BATS_TEST_DIRNAME/../tools/guest-model.py
    head -c $((64 << 10)) /dev/zero >before.raw
    # writes 1..3 to blocks 0, 1, 0; flushed up to 2, 3 with FUA
    printf '1 0\n2 4096\n3 0\n' >log.txt
    printf 'flush 2\nfua 3\n' >durable.txt
    GM=$gm "$py" - <<'EOF'
import importlib.util, os
spec = importlib.util.spec_from_file_location("gm", os.environ["GM"])
gm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gm)
base = bytearray(64 << 10)
good = bytearray(base); good[0:4096] = gm.block_for(3); good[4096:8192] = gm.block_for(2)
stale = bytearray(good); stale[0:4096] = gm.block_for(1)
lost = bytearray(good); lost[4096:8192] = bytes(4096)
for name, d in (("good", good), ("stale", stale), ("lost", lost)):
    open(name + ".raw", "wb").write(d)
EOF
    run -0 "$py" "$gm" durable before.raw log.txt durable.txt good.raw
    run -1 "$py" "$gm" durable before.raw log.txt durable.txt stale.raw
    [[ $output == *"block at 0 holds write 1, not durable write 3"* ]] || fail "$output"
    run -1 "$py" "$gm" durable before.raw log.txt durable.txt lost.raw
    [[ $output == *"block at 4096 holds other data, not durable write 2"* ]] || fail "$output"
}
