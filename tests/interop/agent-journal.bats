#!/usr/bin/env bats
# The journals of an agent's live jobs (mirror, active commit): the agent is
# killed (-9) while a guest writes, mid-copy or once ready; `job list` names
# the job and the source as authoritative; then, the agent gone, `pivot ID`
# brings the target in step and names it in the agent's state file (a
# restarted agent opens it), `job resume ID` brings it in step without the
# switch, `job abort ID` drops the job.  Every write the guest saw
# acknowledged is on the image the disk ends on (the guest's model), and
# the catch-up copies no more than what was left plus the regions the
# write-intent bitmap marks.  A restarted agent brings a killed mirror or
# stream back paused (job resume goes on live, from the journal's
# checkpoint) and ends a killed snapshot transaction as job abort would.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
load ../jobs-helpers
bats_require_minimum_version 1.5.0

setup() {
    jobs_setup
    export BLOCKCTL_STATE_DIR=$BATS_TEST_TMPDIR/state
    export BLOCKCTL_CHECKPOINT_SECS=0.2
}

teardown() {
    copy_teardown
}

# up: the chain served by a blockctl agent with a state file, a guest
# writing (BG_PID)
up() {
    rm -f ./*.qcow2 stop st.json && mkchain || return 1
    S=$(sock_path qmp)
    NBD=$(sock_path nbd)
    start_agent --disk vda=top.qcow2 || return 1
    bg_start w.out w.err "$PY" "$TOOLS/guest-model.py" write "$URI" model.json \
        --rate 400 --seconds 60 --stop-file stop --span $((48 << 20)) --log log.txt
    WPID=$BG_PID
    sleep 0.5
}

start_agent() {
    echo "$BATS_TEST_TMPDIR/server.pid" >>"$BATS_TEST_TMPDIR/.servers"
    "$PROG" agent --qmp "$S" --nbd "unix:$NBD" --state "$PWD/st.json" "$@" \
        --daemonize --pidfile "$BATS_TEST_TMPDIR/server.pid" 3>&- ||
        { fail "the agent did not start"; return 1; }
    URI="nbd+unix:///vda?socket=$NBD"
}

# kill_agent: kill -9 the agent; the guest stops (its writes fail), its model kept
kill_agent() {
    kill -KILL "$(cat "$BATS_TEST_TMPDIR/server.pid")"
    sleep 0.3
    touch stop
    wait "$WPID" 2>/dev/null || true
    [ -s model.json ] || fail "no model"
}

# restarted_serves FILE: the agent restarted with its state file serves FILE
restarted_serves() {
    start_agent
    script >q.out <<EOF
query-block
EOF
    grep -q "$1" q.out || fail "$(cat q.out)"
    stop_server
}

# start_agent_log: the agent restarted with its state file, in the
# foreground (its log in agent.log), once it says it is ready
start_agent_log() {
    local n=200
    echo "$BATS_TEST_TMPDIR/server.pid" >>"$BATS_TEST_TMPDIR/.servers"
    : >agent.log
    bg_start agent.out agent.log "$PROG" agent --qmp "$S" --nbd "unix:$NBD" \
        --state "$PWD/st.json" --pidfile "$BATS_TEST_TMPDIR/server.pid"
    until grep -q 'blockctl agent: ready' agent.log; do
        [ $n -gt 0 ] && kill -0 "$BG_PID" 2>/dev/null ||
            { fail "the agent did not start: $(cat agent.log)"; return 1; }
        sleep 0.05
        n=$((n - 1))
    done
    URI="nbd+unix:///vda?socket=$NBD"
}

# agent_job_paused ID: the agent lists job ID paused (polled: it pauses
# once its thread reaches a pause point); its line of `job list
# --output=json` in JOB
agent_job_paused() {
    local i
    for i in $(seq 50); do
        run -0 "$PROG" job --agent "$S" list --output=json
        JOB=$(jq -c ".[] | select(.id == \"$1\")" <<<"$output")
        [ "$(jq -r .status <<<"$JOB")" = paused ] && return 0
        sleep 0.1
    done
    fail "job $1 is not paused: $output"
}

# guest2: a second guest writing through the export (model2.json); W2
guest2() {
    rm -f stop
    bg_start w2.out w2.err "$PY" "$TOOLS/guest-model.py" write "$URI" model2.json \
        --rate 400 --seconds 60 --stop-file stop --span $((48 << 20)) --log log2.txt --seed 7
    W2=$BG_PID
    sleep 0.3
}

# guest2_end: it stops, having written without an error
guest2_end() {
    touch stop
    wait "$W2" || fail "the guest failed: $(cat w2.err)"
    [ "$(jq length model2.json)" -gt 0 ] || fail "the guest wrote nothing"
}

# chain_of IMG: the file names of its backing chain, top first
chain_of() {
    qemu-img info -U --backing-chain --output=json "$1" |
        jq -r '[.[].filename | split("/")[-1]] | join(" ")'
}

# the one journal's id, and a field of it
jid() { basename "$(ls "$BLOCKCTL_STATE_DIR"/jobs/*.json)" .json; }
jfield() { jq -r ".$1" "$BLOCKCTL_STATE_DIR/jobs/$(jid).json"; }

# holds_model IMG: IMG (with its chain) holds every write the guest saw
# flushed (it flushes every 50 writes): each block it wrote reads as its
# last write up to the last flush, or as a later write (acknowledged or in
# flight at the kill), never older
holds_model() {
    qemu-img convert -O raw "$1" got.raw
    "$PY" - got.raw before.raw log.txt <<'EOF' || fail "'$1' lost writes the guest saw flushed"
import struct, sys
got, before = open(sys.argv[1], 'rb').read(), open(sys.argv[2], 'rb').read()
log = [tuple(map(int, l.split())) for l in open(sys.argv[3])]
top = log[-1][0] if log else 0
flushed = max(top - 1, 0) // 50 * 50   # (the flush after a 50th write may not have ended)
durable, later = {}, {}
for seq, off in log:
    if seq <= flushed:
        durable[off] = seq
    else:
        later.setdefault(off, set()).add(seq)
bad = []
if len(got) != len(before):
    bad.append('size')
for off in set(durable) | set(later):
    g = got[off:off + 4096]
    magic, seq = struct.unpack_from('<QQ', g)
    is_write = magic == 0x6d6f64656c000000
    if is_write and (seq in later.get(off, ()) or seq == top + 1):
        continue                    # a later write (or the one in flight)
    if off in durable:
        ok = is_write and seq == durable[off]
    else:
        ok = g == before[off:off + 4096]
    if not ok:
        bad.append(off)
# blocks the guest never wrote read as before
for off in range(0, len(before), 4096):
    if off not in durable and off not in later and got[off:off + 4096] != before[off:off + 4096]:
        magic, seq = struct.unpack_from('<QQ', got[off:off + 4096])
        if not (magic == 0x6d6f64656c000000 and seq == top + 1):
            bad.append(off)
if bad:
    print('blocks wrong: %s (last write %d, flushed to %d)' % (sorted(bad)[:10], top, flushed))
    sys.exit(1)
EOF
}

# bounded_catch_up: the offline catch-up copied at most what the bulk copy
# had left plus the regions the write-intent bitmap marks
bounded_catch_up() {
    local copied total wib marked bytes
    copied=$(jfield copied) total=$(jfield total) wib=$(jfield '"write-intent-bitmap"')
    marked=$("$PY" - "$wib" <<'EOF'
import struct, sys
d = open(sys.argv[1], 'rb').read()
gran = struct.unpack_from('<Q', d, 24)[0]
print(sum(bin(b).count('1') for b in d[64:]) * gran)
EOF
)
    echo "copied=$copied total=$total marked=$marked" >&3
    run -0 --separate-stderr "$@"
    [[ $stderr =~ copied\ ([0-9]+)\ bytes ]] || fail "no count: $stderr"
    bytes=${BASH_REMATCH[1]}
    [ "$bytes" -le $((total - copied + marked)) ] ||
        fail "copied $bytes bytes, more than $((total - copied)) left + $marked marked"
}

@test "mirror killed mid-copy under guest writes: listed, source authoritative; pivot ID switches the state file to a target that holds every write" {
    up
    script >s.out <<EOF || fail "$(cat s.out)"
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full", "speed": 8388608}
sleep 2
EOF
    kill_agent
    run -0 "$PROG" job list --output=json
    [ "$(jq -r '.[0].type' <<<"$output")" = mirror ]
    [ "$(jq -r '.[0].live' <<<"$output")" = true ]
    [ "$(jq -r '.[0].running' <<<"$output")" = false ]
    [ "$(jq -r '.[0].authoritative' <<<"$output")" = "$PWD/top.qcow2" ]
    holds_model top.qcow2
    bounded_catch_up "$PROG" pivot "$(jid)"
    [[ $output == *"Pivoted: '$PWD/t.qcow2' holds disk vda"* ]]
    [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/t.qcow2" ]
    [ ! -e "$BLOCKCTL_STATE_DIR/jobs/$(basename "$(ls st.json)")" ]
    run -0 "$PROG" job list
    [ "$output" = "No interrupted jobs" ]
    qemu-img check -q t.qcow2 || [ $? = 3 ]     # (leaks of the kill at most)
    holds_model t.qcow2
    # a restarted agent serves the target
    restarted_serves t.qcow2
}

@test "mirror killed once ready (guest writing after): job resume brings the target in step, the source keeps the disk" {
    up
    script >s.out <<EOF || fail "$(cat s.out)"
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "top"}
wait BLOCK_JOB_READY
sleep 1
EOF
    kill_agent
    [ "$(jfield copied)" = "$(jfield total)" ]
    holds_model top.qcow2
    bounded_catch_up "$PROG" job resume "$(jid)"
    [[ $output == *"holds disk vda"* ]]
    [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/top.qcow2" ]
    qemu-img compare top.qcow2 t.qcow2 >/dev/null
    holds_model t.qcow2
    [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
}

@test "active commit killed under guest writes: pivot ID makes the base the disk's top, holding every write" {
    up
    script >s.out <<EOF || fail "$(cat s.out)"
block-commit {"device": "vda", "job-id": "c", "base-node": "vda-2", "speed": 4194304}
sleep 1.5
EOF
    kill_agent
    run -0 "$PROG" job list --output=json
    [ "$(jq -r '.[0].type' <<<"$output")" = commit ]
    holds_model top.qcow2
    bounded_catch_up "$PROG" pivot "$(jid)"
    [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/base.qcow2" ]
    qemu-img check -q base.qcow2 || [ $? = 3 ]
    holds_model base.qcow2
}

@test "a live job aborted: the target is said incomplete, the journal and its bitmap go; pivot of an offline job is refused" {
    up
    script >s.out <<EOF || fail "$(cat s.out)"
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full", "speed": 4194304}
sleep 1
EOF
    kill_agent
    local wib
    wib=$(jfield '"write-intent-bitmap"')
    [ -e "$wib" ]
    run -0 "$PROG" job abort "$(jid)"
    [[ $output == *"t.qcow2' is incomplete"* ]]
    [[ $output == *"'$PWD/top.qcow2' holds the disk"* ]]
    [ ! -e "$wib" ]
    [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
    holds_model top.qcow2
    run -1 "$PROG" pivot nosuchjob
    [[ $output == *"no interrupted job 'nosuchjob'"* ]]
}

@test "a live job that ends (pivot, cancel) leaves no journal; one running is listed as running and cannot be resumed offline" {
    up
    script >s.out <<EOF || fail "$(cat s.out)"
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full", "speed": 1048576}
sleep 0.5
EOF
    run -0 "$PROG" job list
    [[ $output == *"mirror "*"running"* ]]
    run -1 "$PROG" job resume "$(jid)"
    [[ $output == *"is running"* ]]
    script >s.out <<EOF || fail "$(cat s.out)"
block-job-set-speed {"device": "m", "speed": 0}
wait BLOCK_JOB_READY
block-job-complete {"device": "m"}
wait BLOCK_JOB_COMPLETED
EOF
    [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
    touch stop
    wait "$WPID" || true
    stop_server
    holds_model t.qcow2
}

@test "a restarted agent brings the killed mirror back paused; job resume goes on live, then the pivot: every write kept" {
    up
    script >s.out <<EOF2 || fail "$(cat s.out)"
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full", "speed": 8388608}
sleep 2
EOF2
    kill_agent
    local copied
    copied=$(jfield copied)
    cp model.json model1.json
    cp log.txt log1.txt
    holds_model top.qcow2
    start_agent
    grep -q "restored, paused" "$BATS_TEST_TMPDIR"/*.log 2>/dev/null || true
    # (paused once its thread reaches a pause point: give it a moment)
    local i
    for i in $(seq 50); do
        run -0 "$PROG" job --agent "$S" list --output=json
        [ "$(jq -r '.[0].status' <<<"$output")" = paused ] && break
        sleep 0.1
    done
    [ "$(jq -r '.[0].id' <<<"$output")" = m ] || fail "$output"
    [ "$(jq -r '.[0].status' <<<"$output")" = paused ] || fail "$output"
    run -0 "$PROG" job list --output=json
    [ "$(jq -r '.[0].running' <<<"$output")" = true ]
    # the guest writes again meanwhile
    rm -f stop
    bg_start w2.out w2.err "$PY" "$TOOLS/guest-model.py" write "$URI" model2.json \
        --rate 400 --seconds 60 --stop-file stop --span $((48 << 20)) --log log2.txt --seed 7
    local w2=$BG_PID
    run -0 "$PROG" job --agent "$S" set-speed m 0
    run -0 "$PROG" job --agent "$S" resume m
    run -0 "$PROG" pivot --agent "$S" --wait --timeout 60 m
    touch stop
    wait "$w2" || fail "the guest failed: $(cat w2.err)"
    stop_server
    [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
    [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/t.qcow2" ]
    qemu-img check -q t.qcow2 || [ $? = 3 ]     # (leaks of the kill at most)
    # the first guest's flushed writes, then every write of the second (it ended cleanly)
    "$PY" "$TOOLS/guest-model.py" expect before.raw model1.json mid.raw
    qemu-img convert -O raw top.qcow2 top.raw
    "$PY" "$TOOLS/guest-model.py" expect top.raw model2.json expect.raw
    qemu-img compare t.qcow2 expect.raw >/dev/null || fail "the target lost writes"
}

@test "a clean stop (SIGTERM) cancels a live mirror as QEMU does: the disk stays on its source, no journal or bitmap is left, a restart brings back no job" {
    up
    script >s.out <<EOF2 || fail "$(cat s.out)"
drive-mirror {"device": "vda", "job-id": "m", "target": "$PWD/t.qcow2", "format": "qcow2", "sync": "full", "speed": 4194304}
sleep 0.5
EOF2
    local wib
    wib=$(jfield '"write-intent-bitmap"')
    [ -e "$wib" ]
    touch stop
    wait "$WPID" || fail "the guest failed: $(cat w.err)"
    stop_server
    [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
    [ ! -e "$wib" ]
    [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/top.qcow2" ]
    [ -e t.qcow2 ]
    "$PY" "$TOOLS/guest-model.py" expect before.raw model.json expect.raw
    qemu-img compare top.qcow2 expect.raw >/dev/null || fail "the source lost writes"
    start_agent
    run -0 "$PROG" job --agent "$S" list
    [ "$output" = "No block jobs" ]
    stop_server
}

# stream_checked ID: job resume of a live stream, the agent gone: it copies
# from where the journal says, at most the rest
stream_checked() {
    local copied total from bytes
    copied=$(jfield copied) total=$(jfield total)
    run -0 --separate-stderr "$PROG" job resume "$1"
    [[ $stderr =~ copied\ ([0-9]+)\ bytes\ from\ offset\ ([0-9]+) ]] || fail "resume said: $stderr"
    bytes=${BASH_REMATCH[1]} from=${BASH_REMATCH[2]}
    echo "copied=$copied total=$total resumed from $from: $bytes bytes" >&3
    [ "$from" = "$copied" ] || fail "resumed at $from, the journal said $copied"
    [ "$bytes" -le $((total - copied)) ] || fail "copied $bytes bytes, more than $((total - copied)) left"
}

# stream_killed [BASE-NODE]: the chain served, a guest writing, a live
# stream into the top (above BASE-NODE) at 2 MiB/s, the agent killed 1.5 s in
stream_killed() {
    local base=''
    [ -n "${1:-}" ] && base=", \"base-node\": \"$1\""
    up
    script >s.out <<EOF || { fail "$(cat s.out)"; return 1; }
block-stream {"device": "vda", "job-id": "s", "speed": 2097152$base}
sleep 1.5
EOF
    kill_agent
}

@test "live stream killed under guest writes: listed, top authoritative; job resume finishes it offline from the journal's offset, abort leaves the chain" {
    local what
    for what in resume resume-base abort; do
        stream_killed "$([ $what = resume-base ] && echo vda-2)"
        run -0 "$PROG" job list --output=json
        [ "$(jq -r '.[0].type' <<<"$output")" = stream ] || fail "$output"
        [ "$(jq -r '.[0].live' <<<"$output")" = true ]
        [ "$(jq -r '.[0].running' <<<"$output")" = false ]
        [ "$(jq -r '.[0].authoritative' <<<"$output")" = "$PWD/top.qcow2" ]
        [ "$(jq -r '.[0].copied > 0' <<<"$output")" = true ] || fail "no checkpoint: $output"
        run -0 --separate-stderr "$PROG" info top.qcow2
        [[ $stderr == *"interrupted stream job $(jid)"* ]] || fail "info said: $stderr"
        holds_model top.qcow2
        run -1 "$PROG" pivot "$(jid)"
        [[ $output == *"only a mirror of an agent pivots"* ]]
        case $what in
        resume)
            stream_checked "$(jid)"
            [ "$(qemu-img info --output=json top.qcow2 | jq -r '."backing-filename"')" = null ] ;;
        resume-base)
            stream_checked "$(jid)"
            [ "$(qemu-img info --output=json top.qcow2 | jq -r '."backing-filename"')" = base.qcow2 ] ;;
        abort)
            run -0 "$PROG" job abort "$(jid)"
            [[ $output == *"reads as before the stream"* ]]
            [ "$(qemu-img info --output=json top.qcow2 | jq -r '."backing-filename"')" = mid.qcow2 ] ;;
        esac
        [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
        qemu-img check -q top.qcow2 || [ $? = 3 ]
        holds_model top.qcow2
    done
}

@test "a restarted agent brings an interrupted live stream back paused, from the journal's offset; job resume goes on live, the guest writing; the top then stands alone with every write" {
    local what copied total bytes from
    for what in resume resume-base; do
        stream_killed "$([ $what = resume-base ] && echo vda-2)"
        copied=$(jfield copied) total=$(jfield total)
        [ "$copied" -gt 0 ] || fail "no checkpoint"
        holds_model top.qcow2
        start_agent_log
        grep -q "stream job s (journal $(jid)) restored, paused from offset $copied" agent.log ||
            fail "$(cat agent.log)"
        agent_job_paused s
        # what the disk reads when the agent comes back (the killed agent's
        # kill log applied: writes acknowledged, never flushed, are there)
        qemu-img convert -f raw -O raw "$URI" mid.raw
        [ "$(jq -r .type <<<"$JOB")" = stream ] || fail "$JOB"
        [ "$(jq -r .offset <<<"$JOB")" = "$copied" ] || fail "restored at $JOB, the journal said $copied"
        [ "$(jq -r .len <<<"$JOB")" = "$total" ] || fail "$JOB"
        # the journal is the restarted agent's: running, not to resume offline
        run -0 "$PROG" job list --output=json
        [ "$(jq -r '.[0].running' <<<"$output")" = true ] || fail "$output"
        run -1 "$PROG" job resume "$(jid)"
        [[ $output == *"is running"* ]] || fail "$output"
        # the guest writes meanwhile, the job paused, then going on
        guest2
        run -0 "$PROG" job --agent "$S" set-speed s 0
        if [ $what = resume ]; then
            # over QMP
            script >s.out <<EOF || fail "$(cat s.out)"
job-resume {"id": "s"}
wait BLOCK_JOB_COMPLETED
EOF
        else
            # with the command line (the job may be over before a wait could start)
            run -0 "$PROG" job --agent "$S" resume s
            local i
            for i in $(seq 300); do
                run -0 "$PROG" job --agent "$S" list
                [ "$output" = "No block jobs" ] && break
                sleep 0.1
            done
        fi
        grep -q "disk vda: streamed into $PWD/top.qcow2" agent.log || fail "$(cat agent.log)"
        guest2_end
        stop_server
        [[ $(cat agent.log) =~ job\ s:\ copied\ ([0-9]+)\ bytes\ from\ offset\ ([0-9]+) ]] ||
            fail "no count: $(cat agent.log)"
        bytes=${BASH_REMATCH[1]} from=${BASH_REMATCH[2]}
        echo "$what: copied=$copied total=$total resumed from $from: $bytes bytes" >&3
        [ "$from" = "$copied" ] || fail "resumed at $from, the journal said $copied"
        [ "$bytes" -le $((total - copied)) ] || fail "copied $bytes bytes, more than $((total - copied)) left"
        [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
        run -0 "$PROG" job list
        [ "$output" = "No interrupted jobs" ]
        if [ $what = resume ]; then
            [ "$(chain_of top.qcow2)" = top.qcow2 ] || fail "chain: $(chain_of top.qcow2)"
        else
            [ "$(chain_of top.qcow2)" = "top.qcow2 base.qcow2" ] || fail "chain: $(chain_of top.qcow2)"
        fi
        qemu-img check -q top.qcow2 || [ $? = 3 ]     # (leaks of the kill at most)
        # the disk as at the restart, with every write of the second guest
        "$PY" "$TOOLS/guest-model.py" expect mid.raw model2.json expect.raw
        qemu-img compare top.qcow2 expect.raw >/dev/null || fail "$what: the top lost writes"
    done
}

@test "a restored live stream cancelled, or the agent stopped, ends its journal and leaves a valid chain with the guest's writes; a stream that ends leaves no journal" {
    up
    script >s.out <<EOF || fail "$(cat s.out)"
block-stream {"device": "vda", "job-id": "s"}
wait BLOCK_JOB_COMPLETED
EOF
    [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
    touch stop
    wait "$WPID" || true
    local how
    stop_server
    for how in job-cancel sigterm; do
        stream_killed
        [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 1 ]
        [ "$(jfield copied)" -gt 0 ] || fail "no checkpoint"
        start_agent_log
        agent_job_paused s
        qemu-img convert -f raw -O raw "$URI" mid.raw
        guest2
        if [ $how = job-cancel ]; then
            # (a paused job: job-cancel, as QEMU's; block-job-cancel wants force)
            script >s.out <<EOF || fail "$(cat s.out)"
job-cancel {"id": "s"}
wait BLOCK_JOB_CANCELLED
EOF
            run -0 "$PROG" job --agent "$S" list
            [ "$output" = "No block jobs" ] || fail "$output"
            [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
        fi
        guest2_end
        stop_server
        [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
        # the chain as it was (a stream cancelled midway), the guest's writes on its top
        [ "$(chain_of top.qcow2)" = "top.qcow2 mid.qcow2 base.qcow2" ] ||
            fail "$how: chain: $(chain_of top.qcow2)"
        qemu-img check -q top.qcow2 || [ $? = 3 ]
        "$PY" "$TOOLS/guest-model.py" expect mid.raw model2.json expect.raw
        qemu-img compare top.qcow2 expect.raw >/dev/null || fail "$how: the top lost writes"
        # restarted again: nothing to bring back
        start_agent
        run -0 "$PROG" job --agent "$S" list
        [ "$output" = "No block jobs" ] || fail "$output"
        stop_server
    done
}

@test "a stream killed once its relink was on disk (its journal not yet gone): the restarted agent ends the journal, the top standing alone" {
    rm -f ./*.qcow2 st.json && mkchain
    S=$(sock_path qmp)
    NBD=$(sock_path nbd)
    # (killed at the second state file write: the one after the relink)
    BLOCKCTL_FAULT='rename:2:kill:st.json' start_agent --disk vda=top.qcow2
    script >s.out <<EOF || true
block-stream {"device": "vda", "job-id": "s"}
wait BLOCK_JOB_COMPLETED
EOF
    sleep 0.3
    [ "$(jfield state)" = relinking ] || fail "journal: $(cat "$BLOCKCTL_STATE_DIR"/jobs/*)"
    [ "$(chain_of top.qcow2)" = top.qcow2 ] || fail "chain: $(chain_of top.qcow2)"
    local id
    id=$(jid)
    start_agent_log
    grep -q "stream job $id had finished" agent.log || fail "$(cat agent.log)"
    [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
    run -0 "$PROG" job --agent "$S" list
    [ "$output" = "No block jobs" ]
    guest_on_vda top.qcow2
    qemu-img check -q top.qcow2 || [ $? = 3 ]
    [ "$(chain_of top.qcow2)" = top.qcow2 ]
}

# two disks: vda (the chain) and vdb
up2() {
    rm -f ./*.qcow2 .blockctl-new.* stop st.json && mkchain || return 1
    qemu-img create -q -f qcow2 d2.qcow2 16M && qio d2.qcow2 'write -P 9 0 1M' || return 1
    S=$(sock_path qmp)
    NBD=$(sock_path nbd)
}

@test "live snapshot of 2 disks, the agent killed between the overlays: job list names the old tops; resume makes the second and switches the state file, abort removes the first" {
    local what
    for what in resume abort; do
        up2
        BLOCKCTL_FAULT='rename:1:kill:s2.qcow2' start_agent --disk vda=top.qcow2 --disk vdb=d2.qcow2
        run "$PROG" snapshot --agent "$S" vda "$PWD/s1.qcow2" vdb "$PWD/s2.qcow2"
        [ "$status" -ne 0 ] || fail "the snapshot did not fail: $output"
        sleep 0.3
        [ -e s1.qcow2 ] && [ ! -e s2.qcow2 ] || fail "files: $(ls -A)"
        run -0 "$PROG" job list --output=json
        [ "$(jq -r '.[0].type' <<<"$output")" = snapshot ] || fail "$output"
        [ "$(jq -r '.[0].live' <<<"$output")" = true ]
        [ "$(jq -r '.[0].state' <<<"$output")" = creating ]
        [ "$(jq -r '.[0].authoritative' <<<"$output")" = "$PWD/top.qcow2, $PWD/d2.qcow2" ] || fail "$output"
        run -0 --separate-stderr "$PROG" info d2.qcow2
        [[ $stderr == *"interrupted snapshot job"*"hold the disks"* ]] || fail "info said: $stderr"
        [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/top.qcow2" ]
        if [ $what = resume ]; then
            run -0 "$PROG" job resume "$(jid)"
            [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/s1.qcow2" ]
            [ "$(jq -r '.disks[1].file' st.json)" = "$PWD/s2.qcow2" ]
            # (the agent names the old top absolutely, as it was given; the resume relatively)
            [[ $(qemu-img info --output=json s1.qcow2 | jq -r '."backing-filename"') == *top.qcow2 ]]
            [[ $(qemu-img info --output=json s2.qcow2 | jq -r '."backing-filename"') == *d2.qcow2 ]]
            qemu-img check -q s1.qcow2
            qemu-img check -q s2.qcow2
            qemu-img compare s1.qcow2 before.raw >/dev/null
            # a restarted agent serves the overlays
            restarted_serves s2.qcow2
        else
            run -0 "$PROG" job abort "$(jid)"
            [[ $output == *"Removed the new overlay '$PWD/s1.qcow2'"* ]] || fail "$output"
            [ ! -e s1.qcow2 ] && [ ! -e s2.qcow2 ]
            [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/top.qcow2" ]
            [ "$(jq -r '.disks[1].file' st.json)" = "$PWD/d2.qcow2" ]
        fi
        [ -z "$(ls -A | grep '^\.blockctl-new')" ] || fail "left: $(ls -A)"
        [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
    done
}

@test "live snapshot killed once the state file names the overlays: they hold the disks and abort keeps them; a snapshot that ends leaves no journal" {
    up2
    start_agent --disk vda=top.qcow2 --disk vdb=d2.qcow2
    run -0 "$PROG" snapshot --agent "$S" vda "$PWD/s1.qcow2" vdb "$PWD/s2.qcow2"
    [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
    stop_server
    up2
    # (killed at its third state file write: one at the start, one naming
    # the overlays before the switch, then the one after it)
    BLOCKCTL_FAULT="rename:3:kill:st.json" \
        start_agent --disk vda=top.qcow2 --disk vdb=d2.qcow2
    run "$PROG" snapshot --agent "$S" vda "$PWD/s1.qcow2" vdb "$PWD/s2.qcow2"
    sleep 0.3
    [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 1 ] || fail "no journal left; state: $(cat st.json)"
    [ "$(jq -r '.disks[1].file' st.json)" = "$PWD/s2.qcow2" ]
    run -0 "$PROG" job list --output=json
    [ "$(jq -r '.[0].state' <<<"$output")" = switched ] || fail "$output"
    [ "$(jq -r '.[0].authoritative' <<<"$output")" = "$PWD/s1.qcow2, $PWD/s2.qcow2" ] || fail "$output"
    run -0 "$PROG" job abort "$(jid)"
    [[ $output == *"The snapshot had been taken"* ]] || fail "$output"
    [ -e s1.qcow2 ] && [ -e s2.qcow2 ]
    [ "$(jq -r '.disks[1].file' st.json)" = "$PWD/s2.qcow2" ]
    [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
}

# guest_on_vda IMG: a guest writes to vda (served by the restarted agent)
# without an error, and IMG then reads as before.raw with its writes
guest_on_vda() {
    guest2
    sleep 1
    guest2_end
    stop_server
    "$PY" "$TOOLS/guest-model.py" expect before.raw model2.json expect.raw
    qemu-img compare "$1" expect.raw >/dev/null || fail "'$1' lost the guest's writes"
}

@test "a restarted agent ends an interrupted live snapshot as job abort would: rolled back before the state file names the overlays, taken once it does; no journal is left" {
    local fault
    for fault in 'rename:1:kill:s2.qcow2' 'rename:2:kill:st.json' 'rename:3:kill:st.json'; do
        up2
        # killed between the overlays; once both are made, at the state file
        # write naming them; at the one after the switch
        BLOCKCTL_FAULT=$fault start_agent --disk vda=top.qcow2 --disk vdb=d2.qcow2
        run "$PROG" snapshot --agent "$S" vda "$PWD/s1.qcow2" vdb "$PWD/s2.qcow2"
        [ "$status" -ne 0 ] || fail "$fault: the snapshot did not fail: $output"
        sleep 0.3
        [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 1 ] || fail "$fault: no journal"
        [ -e s1.qcow2 ] || fail "$fault: files: $(ls -A)"
        if [ "$fault" = 'rename:1:kill:s2.qcow2' ]; then
            [ ! -e s2.qcow2 ] || fail "$fault: files: $(ls -A)"
        else
            [ -e s2.qcow2 ] || fail "$fault: files: $(ls -A)"
        fi
        start_agent_log
        [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ] || fail "$fault: a journal is left: $(cat agent.log)"
        run -0 "$PROG" job list
        [ "$output" = "No interrupted jobs" ]
        run -0 "$PROG" job --agent "$S" list
        [ "$output" = "No block jobs" ]
        script >q.out <<EOF
query-block
EOF
        if [ "$fault" = 'rename:3:kill:st.json' ]; then
            grep -q "snapshot of vda, vdb is taken" agent.log || fail "$(cat agent.log)"
            grep -q "s1.qcow2" q.out && grep -q "s2.qcow2" q.out || fail "$(cat q.out)"
            [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/s1.qcow2" ]
            [ "$(jq -r '.disks[1].file' st.json)" = "$PWD/s2.qcow2" ]
            [ "$(chain_of s1.qcow2)" = "s1.qcow2 top.qcow2 mid.qcow2 base.qcow2" ] ||
                fail "chain: $(chain_of s1.qcow2)"
            [ "$(chain_of s2.qcow2)" = "s2.qcow2 d2.qcow2" ] || fail "chain: $(chain_of s2.qcow2)"
            guest_on_vda s1.qcow2
            # (the old top holds the disk as at the snapshot)
            qemu-img compare top.qcow2 before.raw >/dev/null || fail "top.qcow2 changed"
            qemu-img check -q s1.qcow2
            qemu-img check -q s2.qcow2
        else
            grep -q "rolled back, vda, vdb on their images as before" agent.log || fail "$(cat agent.log)"
            grep -q "removed the new overlay '$PWD/s1.qcow2'" agent.log || fail "$(cat agent.log)"
            [ ! -e s1.qcow2 ] && [ ! -e s2.qcow2 ] || fail "$fault: files: $(ls -A)"
            [ -z "$(ls -A | grep '^\.blockctl-new')" ] || fail "$fault: left: $(ls -A)"
            grep -q "top.qcow2" q.out && grep -q "d2.qcow2" q.out || fail "$(cat q.out)"
            [ "$(jq -r '.disks[0].file' st.json)" = "$PWD/top.qcow2" ]
            [ "$(jq -r '.disks[1].file' st.json)" = "$PWD/d2.qcow2" ]
            [ "$(chain_of top.qcow2)" = "top.qcow2 mid.qcow2 base.qcow2" ]
            guest_on_vda top.qcow2
        fi
        qemu-img check -q top.qcow2
        qemu-img check -q d2.qcow2
        [ "$(ls "$BLOCKCTL_STATE_DIR"/jobs | wc -l)" = 0 ]
    done
}
