#!/usr/bin/env bats
# Live mirrors when things go wrong, under a guest writer whose every
# acknowledged write is checked afterwards (tests/tools/guest-model.py) on
# the image the disk ends on, each on blockctl agent and on
# qemu-storage-daemon 7.2 with the same QMP script (tests/jobs-helpers.bash)
# and the same outcome: cancel in every state, a qemu-nbd target (migration
# without shared storage), that target's server killed, a full target,
# pause/resume/set-speed, write-blocking and auto at 2000 writes/s.
# AGENT_FULL=1: longer runs.
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
    if [ -n "${TMPFS:-}" ]; then
        umount "$TMPFS" 2>/dev/null || umount -l "$TMPFS" 2>/dev/null
    fi
    return 0
}

# under_guest blockctl|qsd SCRIPT: fresh images on that server, a guest
# writing while the QMP script runs (its output: out.SERVER); then the
# guest stopped (it must have seen no error), the server stopped and
# expect.raw made (what the disk must read as).  $PRE, if set, runs
# before the script.
under_guest() {
    local writer
    guest_up "$1" || return 1
    writer=$BG_PID
    if [ -n "${PRE:-}" ]; then $PRE || return 1; fi
    script <"$2" >"out.$1" || { fail "$1: $(cat "out.$1")"; return 1; }
    ! grep -q '^! timed out' "out.$1" || { fail "$1: $(cat "out.$1")"; return 1; }
    touch stop
    bg_wait "$writer" 30
    [ "$BG_STATUS" -eq 0 ] || { fail "$1: the guest saw a failure: $BG_STATUS $(cat w.out w.err)"; return 1; }
    [ "$(jq .writes <w.out)" -gt 20 ] || { fail "$1: too few writes: $(cat w.out)"; return 1; }
    stop_server
    "$PY" "$TOOLS/guest-model.py" expect before.raw model.json expect.raw
}

# holds SERVER IMAGE [FMT]: IMAGE reads as the disk with every acknowledged write
holds() {
    qemu-img compare -q -f raw ${3:+-F "$3"} expect.raw "$2" ||
        { fail "$1: $2 lost an acknowledged write ($(cat w.out))"; return 1; }
}

# on_source SERVER: the disk is still top.qcow2 over mid.qcow2, with every write
on_source() {
    qemu-img info top.qcow2 | grep -q '^backing file: mid.qcow2' ||
        { fail "$1: $(qemu-img info top.qcow2)"; return 1; }
    holds "$1" top.qcow2 && check_ok top.qcow2
}

# has SERVER REGEX: the script's output has a line matching REGEX
has() {
    grep -qE "$2" "out.$1" || { fail "$1: no '$2' in: $(cat "out.$1")"; return 1; }
}

# agree [SED-SCRIPT]: both servers' outputs are the same (after SED-SCRIPT)
agree() {
    local f
    for f in blockctl qsd; do sed -E "${1:-}" "out.$f" >"norm.$f"; done
    diff -u norm.qsd norm.blockctl || fail "the agent's answers differ from qemu-storage-daemon's"
}

# both SCRIPT CHECK [SED-SCRIPT]: under_guest on each server, then CHECK
# SERVER; then agree SED-SCRIPT
both() {
    local f
    for f in blockctl qsd; do
        under_guest $f "$1" || return 1
        $2 $f || return 1
    done
    agree "${3:-}"
}

# --- 1. cancel in every state

check_cancelled() {
    has "$1" '^BLOCK_JOB_CANCELLED' && on_source "$1"
}

@test "cancel a running mirror: BLOCK_JOB_CANCELLED, the disk stays with every write, as qemu-storage-daemon" {
    cat >s.qmp <<EOF
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full", "speed": 8388608}
sleep 0.3
query-block-jobs
block-job-cancel {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=null
query-block-jobs
EOF
    both s.qmp check_cancelled
}

@test "cancel a paused mirror (refused without force; auto-dismiss off), then job-dismiss: as qemu-storage-daemon" {
    cat >s.qmp <<EOF
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full", "speed": 8388608, "auto-dismiss": false}
block-job-pause {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=paused
query-block-jobs
block-job-cancel {"device": "m"}
block-job-cancel {"device": "m", "force": true}
wait JOB_STATUS_CHANGE id=m status=concluded
query-jobs
block-job-cancel {"device": "m"}
job-dismiss {"id": "m"}
wait JOB_STATUS_CHANGE id=m status=null
query-jobs
EOF
    # (qemu-storage-daemon's mirror keeps the disk drained from completion
    # to finalization, which shows as paused: the agent does not stall the
    # guest meanwhile)
    both s.qmp check_cancelled 's/("paused": )true(, "ready": false, "speed": 0, "status": "pending")/\1false\2/'
}

# the target t.qcow2 is the disk as of one moment, the disk kept every write
check_finished() {
    local k
    has "$1" '^BLOCK_JOB_COMPLETED' && on_source "$1" || return 1
    qemu-img convert -O raw t.qcow2 t.raw
    k=$("$PY" "$TOOLS/guest-model.py" prefix before.raw log.txt t.raw) ||
        { fail "$1: t.qcow2 is not a consistent copy"; return 1; }
    [ "$k" -gt 0 ] || { fail "$1: t.qcow2 holds no guest write"; return 1; }
    check_ok t.qcow2
}

@test "cancel a ready mirror: it finishes without pivot, the target a consistent copy, as qemu-storage-daemon" {
    cat >s.qmp <<EOF
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full"}
wait BLOCK_JOB_READY device=m
sleep 0.3
block-job-cancel {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=null
query-block-jobs
EOF
    both s.qmp check_finished
}

@test "cancel a mirror in standby (paused while ready): refused without force; resumed, it finishes without pivot" {
    cat >s.qmp <<EOF
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full"}
wait BLOCK_JOB_READY device=m
block-job-pause {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=standby
query-block-jobs
sleep 0.3
block-job-cancel {"device": "m"}
block-job-resume {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=ready
block-job-cancel {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=null
query-block-jobs
EOF
    both s.qmp check_finished
}

@test "job-cancel a mirror in standby: forced, BLOCK_JOB_CANCELLED, no pivot, as qemu-storage-daemon" {
    cat >s.qmp <<EOF
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full"}
wait BLOCK_JOB_READY device=m
job-pause {"id": "m"}
wait JOB_STATUS_CHANGE id=m status=standby
job-cancel {"id": "m"}
wait JOB_STATUS_CHANGE id=m status=null
EOF
    both s.qmp check_cancelled
}

@test "force-cancel a ready mirror: BLOCK_JOB_CANCELLED, no pivot, as qemu-storage-daemon" {
    cat >s.qmp <<EOF
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full"}
wait BLOCK_JOB_READY device=m
block-job-cancel {"device": "m", "force": true}
wait JOB_STATUS_CHANGE id=m status=null
EOF
    both s.qmp check_cancelled
}

@test "job-cancel a completed mirror while pending (auto-finalize off): aborting, concluded, no pivot; job-dismiss" {
    cat >s.qmp <<EOF
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full", "auto-finalize": false, "auto-dismiss": false}
wait BLOCK_JOB_READY device=m
block-job-complete {"device": "m"}
wait BLOCK_JOB_PENDING id=m
query-jobs
query-block-jobs
job-cancel {"id": "m"}
wait JOB_STATUS_CHANGE id=m status=concluded
query-jobs
job-cancel {"id": "m"}
job-finalize {"id": "m"}
job-dismiss {"id": "m"}
wait JOB_STATUS_CHANGE id=m status=null
query-jobs
EOF
    # (qemu-storage-daemon's mirror keeps the disk drained from completion
    # to finalization, which shows as paused: the agent does not stall the
    # guest meanwhile)
    both s.qmp check_cancelled 's/("paused": )true(, "ready": false, "speed": 0, "status": "pending")/\1false\2/'
}

# --- 2. a qemu-nbd target: migration without shared storage

# nbd_target FMT: a fresh 64 MiB image t.FMT served by qemu-nbd on tgt.sock
nbd_target() {
    rm -f "t.$1"
    qemu-img create -q -f "$1" "t.$1" 64M && nbd_serve tgt -f "$1" "t.$1"
}

# nbd_pivoted SERVER FMT: the disk ended on t.FMT, with every write
nbd_pivoted() {
    server_stop "$BATS_TEST_TMPDIR/tgt.pid"
    has "$1" '^BLOCK_JOB_COMPLETED \{"device": "m", "speed": 0, "type": "mirror"\}$' &&
        holds "$1" "t.$2" "$2" && check_ok "t.$2"
}

@test "mirror to a qemu-nbd target (qcow2 and raw, over a UNIX socket), then pivot: the guest's data is on the target" {
    local f fmt
    for fmt in qcow2 raw; do
        cat >s.qmp <<EOF
drive-mirror {"device": "vda", "job-id": "m", "target": "nbd+unix:///?socket=$(sock_path tgt)", "format": "raw", "mode": "existing", "sync": "full"}
wait BLOCK_JOB_READY device=m
sleep 0.3
block-job-complete {"device": "m"}
wait JOB_STATUS_CHANGE id=m status=null
sleep 0.3
query-block-jobs
EOF
        for f in blockctl qsd; do
            PRE="nbd_target $fmt" under_guest $f s.qmp || return 1
            nbd_pivoted $f $fmt || return 1
        done
        agree
    done
}
