# tests/crash/live.bash - the live operations of the crash matrix (sourced
# by lib.bash): an agent serves a chain to a guest that writes through its
# NBD export (tests/tools/guest-model.py: a flush every 8 writes, every 5th
# write with FUA, and a log of what was acknowledged), and is killed (-9)
# at the Nth I/O call of a live operation: BLOCKCTL_FAULT=any:N:kill armed
# where the operation begins (the agent's x-blockctl-fault; the calls of
# the guest's writes meanwhile count too), N = 1..the calls of a counting
# run (tests/crash/live-drive.py drives the operation).  Operations:
#
#   live-snapshot      blockdev-snapshot-sync to s.qcow2, then the guest's
#                      first writes to it
#   live-stream        block-stream of the whole chain into the top
#   live-commit        active commit into the base (block-commit, READY,
#                      block-job-complete)
#   live-mirror        drive-mirror to t.qcow2, killed before READY
#   live-mirror-ready  the same, armed once READY, the guest writing on
#   live-pivot         armed once READY, then block-job-complete
#
# After each kill:
#   exit      the agent died (SIGKILL), the driver saw it die
#   damaged   every qcow2 image passes qemu-img check with 0 or 3
#   view      the image the agent's state file names holds every write the
#             guest was told is durable (flushed or FUA: guest-model.py
#             durable); a journaled job (every operation here) left at
#             most one journal, which `job list` shows as a live job, not
#             running, naming that same image authoritative
#   rerun     a stream's or snapshot's journal: the agent stopped,
#             `blockctl job resume ID` at even N (a stream copies from the
#             journal's offset, at most the rest) or `job abort ID` at odd
#             N, then the agent restarted finishes what is left (below);
#             a mirror's or commit's is ended one of three ways (N mod 3):
#             0  offline: `blockctl pivot ID` (mirror-ready: `job resume
#                ID`), copying at most what the journal had not copied plus
#                the regions its write-intent bitmap marks; the target then
#                reads as the source and is the disk (or, resume, the
#                source stays the disk)
#             1  `blockctl job abort ID`: the source holds the disk
#             2  live: the agent restarted with its state file brings the
#                job back paused; resumed and pivoted (mirror-ready:
#                cancelled once ready), the target holds the disk; the
#                job went over at most what the journal had not copied
#                plus the marked regions
#             without a journal, the agent restarted with its state file
#             finishes the operation (a snapshot or a stream made again);
#             then no journal, every image passes qemu-img check, the disk
#             holds every durable write, and the chain is the one the
#             operation makes (s.qcow2 over top.qcow2; a top without a
#             backing file; the base or t.qcow2 as the disk after a pivot,
#             reading as the source)
# Power loss (sweeps any:pl-none, any:pl-all, any:pl-r1, any:pl-r2, at
# the same points): the agent runs with a write log (BLOCKCTL_IOLOG,
# lib/io.h) and is killed at point N as above; then
# tests/tools/iolog-replay.py makes every file it wrote (the images, the
# state file st.json, the journals and write-intent bitmaps in its state
# folder) a state a power failure there could leave: what was synced,
# and none, all or a random subset (seeded with OP and N) of the writes
# that were not, built from the files as they were just before the agent
# started ($W.before, their inodes in $W.inodes).  The guest flushes
# every 32 writes and writes every 13th with FUA (a kill: 8 and 5), so
# that more of its writes are not durable; the oracle is the same, on the
# state so made (writes acknowledged but neither flushed nor FUA may be
# lost; a durable one may not).  The agent's kill logs (formats/qcow2/
# wal.c: the table changes of writes not yet flushed, in tmpfs) are the
# point's own ($W.run, BLOCKCTL_RUN_DIR): kept after a kill, which the
# next writer applies; removed with a power failure, as tmpfs goes.
# The result lines are those of crash_point (lib.bash); POWER is what
# iolog-replay.py changed.  JOB INFO is ACTION:STATE:BYTES:LEFT as for the
# offline journals (LEFT: total - copied + the marked regions; BYTES: what
# the offline catch-up says it copied, or for the live way (2) the
# restarted job's progress at its end, the bytes it went over: its bulk
# copy from the journal's offset and the dirty regions; at most LEFT).
# SPDX-License-Identifier: GPL-2.0-or-later

CRASH_LIVE_OPS=(live-snapshot live-stream live-commit live-mirror live-mirror-ready live-pivot)
CRASH_OPS+=("${CRASH_LIVE_OPS[@]}")
# the sweeps of a live operation (those of them CRASH_SWEEPS names run)
CRASH_LIVE_SWEEPS=(any:kill any:pl-none any:pl-all any:pl-r1 any:pl-r2)
# points per live operation at most (evenly spread over the counted calls)
CRASH_LIVE_POINTS=${CRASH_LIVE_POINTS:-150}

_is_live() { [[ $1 == live-* ]]; }

# fx_live: base.qcow2 (16M, data on 0-12M) <- mid.qcow2 (data on 2-6M) <-
# top.qcow2 (the first 256k); view.raw: what the disk reads
fx_live() {
    qemu-img create -q -f qcow2 base.qcow2 16M &&
        _qio qcow2 base.qcow2 'write -P 0x11 0 12M' &&
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 &&
        _qio qcow2 mid.qcow2 'write -P 0x22 2M 4M' 'write -z 8M 1M' &&
        qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 &&
        _qio qcow2 top.qcow2 'write -P 0x33 0 256k' &&
        qemu-img convert -O raw top.qcow2 ../live-view.raw
}

# _live_journaled OP: the operation keeps a job journal (type in JTYPE)
_live_journaled() {
    case $1 in
    live-commit) JTYPE=commit ;;
    live-mirror | live-mirror-ready | live-pivot) JTYPE=mirror ;;
    live-stream) JTYPE=stream ;;
    live-snapshot) JTYPE=snapshot ;;
    *) JTYPE='' ;;
    esac
    [ -n "$JTYPE" ]
}

# _live_agent W [IOLOG]: start the agent for the point folder W (cwd), the
# state file st.json naming the disk (a restart: no --disk), with the
# write log IOLOG (BLOCKCTL_IOLOG) if given; LPID its pid
_live_agent() {
    local args=(--disk vda=top.qcow2)
    [ -e st.json ] && args=()
    rm -f "$1.pid" "$1.q" "$1.n"
    BLOCKCTL_IOLOG=${2:-} BLOCKCTL_FAULT='' BLOCKCTL_STATE_DIR=$1.state timeout 20 "$PROG" agent --qmp "$1.q" \
        --nbd "unix:$1.n" "${args[@]}" --state "$PWD/st.json" --daemonize \
        --pidfile "$1.pid" >>"$1.alog" 2>&1 3>&- || return 1
    LPID=$(cat "$1.pid")
}

# _live_gone PID: wait (10 s at most) until it is gone
_live_gone() {
    local i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    return 1
}

# _live_stop W: stop the agent we started for W (if still there), by its pid
_live_stop() {
    [ -n "${LPID:-}" ] || return 0
    kill -TERM "$LPID" 2>/dev/null && _live_gone "$LPID" || kill -KILL "$LPID" 2>/dev/null
    LPID=''
}

# _live_writer W [SEED [FLUSH FUA]]: the guest, writing until $W.stop
# exists, a flush every FLUSH writes (8) and every FUAth write with FUA
# (5); GPID
_live_writer() {
    /usr/bin/python3 "$CRASH_TESTS_DIR/tools/guest-model.py" write "nbd+unix:///vda?socket=$1.n" \
        "$1.model" --rate 250 --seconds 40 --stop-file "$1.stop" --log "$1.log" \
        --durable "$1.durable" --flush-every "${3:-8}" --fua-every "${4:-5}" --seed "${2:-1}" \
        >"$1.wout" 2>"$1.werr" &
    GPID=$!
}

# _live_top: the image the state file names as the disk (TOP)
_live_top() {
    TOP=$(jq -r '.disks[0].file' st.json 2>/dev/null) || TOP=''
}

# _live_holds IMG WHAT: IMG holds every durable write; else view=1 or rerun=1 (WHAT)
_live_holds() {
    local out
    if ! qemu-img convert -U -O raw "$1" "$w.got.raw" 2>"$w.got.err"; then
        eval "$2=1"
        vdet+="cannot read $1: $(head -c 200 "$w.got.err"); "
        return 1
    fi
    if ! out=$(/usr/bin/python3 "$CRASH_TESTS_DIR/tools/guest-model.py" durable \
        "$CRASH_ROOT/fix/live-view.raw" "$w.log" "$w.durable" "$w.got.raw" 2>&1); then
        eval "$2=1"
        vdet+="${out:0:400}; "
        return 1
    fi
    rm -f "$w.got.raw"
}

# _live_checkall WHAT: every qcow2 image passes qemu-img check (0 or 3)
_live_checkall() {
    local f x
    for f in *.qcow2; do
        [ -e "$f" ] || continue
        x=0
        qemu-img check -q -U "$f" >/dev/null 2>&1 || x=$?
        if [ "$x" -ne 0 ] && [ "$x" -ne 3 ]; then
            eval "$1=1"
            vdet+="qemu-img check $f exits $x; "
        fi
    done
}

# _live_marked WIB: the bytes its set bits cover
_live_marked() {
    [ -e "$1" ] || { echo 0; return; }
    /usr/bin/python3 - "$1" <<'EOF'
import struct, sys
d = open(sys.argv[1], 'rb').read()
gran = struct.unpack_from('<Q', d, 24)[0]
print(sum(bin(b).count('1') for b in d[64:]) * gran)
EOF
}

# _live_final OP: the end state after the recovery (see the top)
_live_final() {
    local op=$1 b
    _jfiles
    [ ${#JF[@]} -eq 0 ] || { rerun=1 vdet+="a journal is left after the recovery: ${JF[*]##*/}; "; }
    _live_checkall rerun
    _live_top
    [ -n "$TOP" ] || { rerun=1 vdet+="no disk in st.json; "; return; }
    _live_holds "$TOP" rerun
    case $op in
    live-snapshot)
        [ "$TOP" = "$PWD/s.qcow2" ] || rerun=1 vdet+="the disk is $TOP, not s.qcow2; "
        b=$(qemu-img info -U --output=json "$TOP" | jq -r '."backing-filename" // ""')
        [ "${b##*/}" = top.qcow2 ] || rerun=1 vdet+="s.qcow2's backing file is '$b'; " ;;
    live-stream)
        b=$(qemu-img info -U --output=json "$TOP" | jq -r '."backing-filename" // ""')
        [ -z "$b" ] || rerun=1 vdet+="$TOP still has the backing file '$b'; " ;;
    esac
}

# _live_recover OP N: end what the kill left (see the top); sets JINFO
_live_recover() {
    local op=$1 n=$2 id state copied total wib marked left out rc2=0 act bytes='-' want
    _jfiles
    if [ ${#JF[@]} -eq 1 ] && _live_journaled "$op" && { [ "$JTYPE" = stream ] || [ "$JTYPE" = snapshot ]; }; then
        # (finished offline from its journal, or rolled back, the agent stopped)
        id=$(basename "${JF[0]}" .json)
        state=$(jq -r '.state // "?"' "${JF[0]}")
        copied=$(jq -r '.copied // 0' "${JF[0]}")
        total=$(jq -r '.total // 0' "${JF[0]}")
        left=$((total - copied))
        act=abort
        [ $((n % 2)) = 0 ] && act=resume
        out=$(BLOCKCTL_STATE_DIR=$w.state timeout 60 "$PROG" job "$act" "$id" 2>&1) || rc2=$?
        [ "$rc2" -eq 0 ] || { rerun=1 vdet+="job $act ($state) exited $rc2: ${out:0:300}; "; }
        if [[ $out =~ copied\ ([0-9]+)\ bytes\ from\ offset\ ([0-9]+) ]]; then
            bytes=${BASH_REMATCH[1]}
            [ "${BASH_REMATCH[2]}" = "$copied" ] ||
                rerun=1 vdet+="job resume began at ${BASH_REMATCH[2]}, the journal said $copied; "
            [ "$bytes" -le "$left" ] ||
                rerun=1 vdet+="job resume copied $bytes bytes, more than the $left left; "
        fi
        JINFO=$act:$state:$bytes:$left
        [ -n "$out" ] && printf '%s\n' "$out" >"$w.rerun.out"
        _jfiles
        [ ${#JF[@]} -eq 0 ] || rerun=1 vdet+="a journal is left after job $act; "
        if _live_agent "$w"; then
            out=$(timeout 90 /usr/bin/python3 "$CRASH_LIB_DIR/live-drive.py" "$w.q" finish "${op#live-}")
            [[ $out == finished* ]] || rerun=1 vdet+="the restarted agent: $out; "
            [ "$act" = resume ] && [ "$out" != "finished nothing" ] &&
                rerun=1 vdet+="after job resume, the restarted agent had to finish: $out; "
            _live_stop "$w"
        else
            rerun=1 vdet+="the agent did not start again: $(tail -n 3 "$w.alog"); "
        fi
    elif [ ${#JF[@]} -eq 1 ] && _live_journaled "$op"; then
        id=$(basename "${JF[0]}" .json)
        state=$(jq -r '.state // "?"' "${JF[0]}")
        copied=$(jq -r '.copied // 0' "${JF[0]}")
        total=$(jq -r '.total // 0' "${JF[0]}")
        wib=$(jq -r '."write-intent-bitmap" // ""' "${JF[0]}")
        marked=$(_live_marked "$wib")
        left=$((total - copied + marked))
        case $((n % 3)) in
        0)
            act=resume
            if [ "$op" = live-mirror-ready ]; then
                out=$(BLOCKCTL_STATE_DIR=$w.state timeout 60 "$PROG" job resume "$id" 2>&1) || rc2=$?
                want=$PWD/top.qcow2
            else
                out=$(BLOCKCTL_STATE_DIR=$w.state timeout 60 "$PROG" pivot "$id" 2>&1) || rc2=$?
                want=$PWD/t.qcow2
                [ "$op" = live-commit ] && want=$PWD/base.qcow2
            fi
            [ "$rc2" -eq 0 ] || { rerun=1 vdet+="offline $act ($state) exited $rc2: ${out:0:300}; "; }
            if [[ $out =~ copied\ ([0-9]+)\ bytes\ from\ offset\ ([0-9]+) ]]; then
                bytes=${BASH_REMATCH[1]}
                [ "${BASH_REMATCH[2]}" = "$copied" ] ||
                    rerun=1 vdet+="the catch-up began at ${BASH_REMATCH[2]}, the journal said $copied; "
                [ "$bytes" -le "$left" ] ||
                    rerun=1 vdet+="the catch-up copied $bytes bytes, more than the $left left or marked; "
            fi
            _live_top
            [ "$TOP" = "$want" ] || rerun=1 vdet+="after offline $act the disk is $TOP, not $want; "
            [ -z "$wib" ] || [ ! -e "$wib" ] || rerun=1 vdet+="the write-intent bitmap is left; "
            case $op in
            live-commit) qemu-img compare -U -q top.qcow2 base.qcow2 >/dev/null 2>&1 ||
                rerun=1 vdet+="after pivot, base.qcow2 does not read as top.qcow2; " ;;
            *) qemu-img compare -U -q top.qcow2 t.qcow2 >/dev/null 2>&1 ||
                rerun=1 vdet+="after $act, t.qcow2 does not read as top.qcow2; " ;;
            esac ;;
        1)
            act=abort
            out=$(BLOCKCTL_STATE_DIR=$w.state timeout 60 "$PROG" job abort "$id" 2>&1) || rc2=$?
            [ "$rc2" -eq 0 ] || { rerun=1 vdet+="job abort ($state) exited $rc2: ${out:0:300}; "; }
            [ -z "$wib" ] || [ ! -e "$wib" ] || rerun=1 vdet+="the write-intent bitmap is left; " ;;
        2)
            act=live
            if ! _live_agent "$w"; then
                rerun=1 vdet+="the agent did not start again: $(tail -n 3 "$w.alog"); "
            else
                out=$(timeout 90 /usr/bin/python3 "$CRASH_LIB_DIR/live-drive.py" "$w.q" finish "${op#live-}")
                if [[ $out =~ ^finished\ job\ ([0-9]+)$ ]]; then
                    # (the restored job's progress: its bulk copy from the
                    # journal's offset, then the regions its bitmap marked)
                    bytes=${BASH_REMATCH[1]}
                    [ "$bytes" -le "$left" ] ||
                        rerun=1 vdet+="the restarted agent's job went over $bytes bytes, more than the $left left or marked; "
                elif [ "$out" = "finished nothing" ] && [ "$state" = pivoting ] &&
                    [ "$TOP" = "$PWD/$([ "$op" = live-commit ] && echo base || echo t).qcow2" ]; then
                    # killed once the state file named the target, before
                    # the journal went: the restarted agent ends the journal
                    bytes=0
                    grep -q "had pivoted onto $TOP: the job is over" "$w.alog" ||
                        rerun=1 vdet+="the restarted agent did not say the pivot was over; "
                else
                    rerun=1 vdet+="the restarted agent did not finish the job ($state): $out; "
                fi
                _live_stop "$w"
            fi ;;
        esac
        JINFO=$act:$state:$bytes:$left
        [ -n "$out" ] && printf '%s\n' "$out" >"$w.rerun.out"
    else
        JINFO=-
        if _live_agent "$w"; then
            out=$(timeout 90 /usr/bin/python3 "$CRASH_LIB_DIR/live-drive.py" "$w.q" finish "${op#live-}")
            [[ $out == finished* ]] || rerun=1 vdet+="the restarted agent: $out; "
            _live_stop "$w"
        else
            rerun=1 vdet+="the agent did not start again: $(tail -n 3 "$w.alog"); "
        fi
    fi
    _live_final "$op"
}

# live_count OP: the calls of OP in a fault-free run ($CRASH_ROOT/ref/OP/counts, "any N")
live_prepare() {
    local op=$1 r=$CRASH_ROOT/ref/$1 w out n
    [ -e "$r/.ok" ] && return 0
    crash_fixture live || return 1
    rm -rf "$r"
    mkdir -p "$r" || return 1
    w=$r/run
    cp -a "$CRASH_ROOT/fix/live" "$w" && rm -f "$w/.ok" || return 1
    (
        export BLOCKCTL_RUN_DIR=$w.run
        cd "$w" || exit 1
        _live_agent "$w" || { echo "crash: $op: the agent did not start: $(cat "$w.alog")" >&2; exit 1; }
        _live_writer "$w"
        sleep 0.3
        out=$(timeout 120 /usr/bin/python3 "$CRASH_LIB_DIR/live-drive.py" "$w.q" "${op#live-}" \
            'any:1000000000:kill')
        touch "$w.stop"
        wait "$GPID"
        _live_stop "$w"
        [[ $out =~ ^done\ ([0-9]+)$ ]] ||
            { echo "crash: $op: the fault-free run: $out $(tail -n 5 "$w.alog")" >&2; exit 1; }
        echo "any ${BASH_REMATCH[1]}" >"$r/counts"
    ) || return 1
    touch "$r/.ok"
}

# live_points OP K: the points, "SWEEP N" a line, for each of the live
# sweeps (CRASH_LIVE_SWEEPS) that CRASH_SWEEPS names: at most
# CRASH_LIVE_POINTS spread evenly (K > 1: every Kth of those, and the last)
live_points() {
    local c n i m=$CRASH_LIVE_POINTS k=$2 last s
    c=$(crash_count "$1" any)
    [ "$c" -lt "$m" ] && m=$c
    for s in "${CRASH_LIVE_SWEEPS[@]}"; do
        _in "$s" "${CRASH_SWEEPS[@]}" || continue
        last=0
        for ((i = 0; i < m; i++)); do
            n=$((1 + i * c / m))
            [ "$n" = "$last" ] && continue
            last=$n
            if [ "$k" -le 1 ] || [ $((i % k)) -eq 0 ] || [ "$i" -eq $((m - 1)) ]; then
                echo "$s $n"
            fi
        done
    done
}

# live_point OP SWEEP N: one point (see the top); prints crash_point's line
live_point() {
    local op=$1 sweep=$2 n=$3 w out fired=0 bad=0 dmg=0 view=0 rerun=0 xf=0 vdet='' JINFO=-
    local LPID='' GPID='' TOP JF id typ auth running live act=${sweep#*:} sub='' log='' plinfo=-
    w=$CRASH_ROOT/pts/$op/${sweep%%:*}-$act-$n
    rm -rf "$w" "$w".*
    mkdir -p "${w%/*}" && cp -a "$CRASH_ROOT/fix/live" "$w" && rm -f "$w/.ok" && cd "$w" || return 1
    # the agent's kill logs (tmpfs in real life): the point's own, for the
    # agent and every command after it
    export BLOCKCTL_RUN_DIR=$w.run
    # power loss (pl-SUBSET): the agent keeps a write log; the files as
    # they are before it starts (their inodes and a copy) are where the
    # state a power failure leaves is built from
    case $act in
    kill) ;;
    pl-none) sub=none ;;
    pl-all) sub=all ;;
    pl-r*) sub=random:$op:${sweep%%:*}:$n:${act#pl-r} ;;
    *) echo "crash: $op: no live sweep '$sweep'" >&2; return 1 ;;
    esac
    if [ -n "$sub" ]; then
        log=$w.iolog
        stat -c "%i $w/%n" -- * >"$w.inodes" && cp -a "$w" "$w.before" || return 1
    fi
    if ! _live_agent "$w" "$log"; then
        printf '%s\t%s\t%s\t0\t1\t0\t0\t0\t0\tthe agent did not start: %s\t-\t-\n' "$op" "$sweep" \
            "$n" "$(tail -n 2 "$w.alog" | tr '\n\t' '  ')"
        return 0
    fi
    # (power loss: fewer flushes and FUA writes, more writes a power
    # failure may lose)
    if [ -n "$sub" ]; then
        _live_writer "$w" "$n" 32 13
    else
        _live_writer "$w" "$n"
    fi
    sleep 0.3
    out=$(timeout 120 /usr/bin/python3 "$CRASH_LIB_DIR/live-drive.py" "$w.q" "${op#live-}" \
        "any:$n:kill")
    touch "$w.stop"
    if [[ $out == done* ]]; then
        # the run made fewer calls than the counting run: not a point
        wait "$GPID"
        _live_stop "$w"
        cd / && rm -rf "$w" "$w".*
        printf '%s\t%s\t%s\t0\t0\t0\t0\t0\t0\tnot reached\n' "$op" "$sweep" "$n"
        return 0
    fi
    fired=1
    if [ "$out" != killed ]; then
        bad=1 vdet+="the driver: $out; "
    fi
    if ! _live_gone "$LPID"; then
        bad=1 vdet+="the agent is still there; "
        kill -KILL "$LPID" 2>/dev/null
        _live_gone "$LPID"
    fi
    LPID=''
    wait "$GPID"
    if [ -n "$sub" ] && [ "$fired" = 1 ]; then
        # the state a power failure at the kill could leave
        plinfo=$(/usr/bin/python3 "$CRASH_TESTS_DIR/tools/iolog-replay.py" "$log" "$w.inodes" \
            "$w.before" "$sub" 2>&1) || { bad=1 vdet+="iolog-replay failed: ${plinfo:0:300}; "; }
        plinfo=${plinfo//[$'\n\t']/ }
        # a power failure takes the kill logs with the page cache
        rm -rf "$w.run"
        [ "${CRASH_KEEP:-0}" = 1 ] || rm -rf "$log" "$w.before"
    fi
    # the state the kill (or the power failure) left
    _live_checkall dmg
    _live_top
    if [ -z "$TOP" ]; then
        view=1 vdet+="st.json names no disk; "
    else
        _live_holds "$TOP" view
    fi
    _jfiles
    if _live_journaled "$op"; then
        if [ ${#JF[@]} -gt 1 ]; then
            view=1 vdet+="${#JF[@]} journals: ${JF[*]##*/}; "
        elif [ ${#JF[@]} -eq 1 ]; then
            out=$(BLOCKCTL_STATE_DIR=$w.state "$PROG" job list --output=json 2>&1)
            IFS=$'\t' read -r id typ auth running live < <(jq -r \
                '.[0] | [.id, .type, .authoritative, .running, .live] | @tsv' <<<"$out" 2>/dev/null) || true
            if [ "$typ" != "$JTYPE" ] || [ "$running" != false ] || [ "$live" != true ]; then
                view=1 vdet+="job list: type $typ, running $running, live $live (want $JTYPE, not running, live): ${out:0:200}; "
            elif [ "$auth" != "$TOP" ]; then
                view=1 vdet+="job list names $auth authoritative, the state file $TOP; "
                _live_holds "$auth" view
            fi
        fi
    elif [ ${#JF[@]} -gt 0 ]; then
        view=1 vdet+="a journal left by an operation that keeps none: ${JF[*]##*/}; "
    fi
    _live_recover "$op" "$n"
    if [ $((bad + dmg + view + rerun)) -gt 0 ] && _known "$op" "$sweep" "$n"; then
        xf=1
    fi
    cd /
    if { [ $((bad + dmg + view + rerun)) -eq 0 ] || [ "$xf" = 1 ]; } && [ "${CRASH_KEEP:-0}" != 1 ]; then
        rm -rf "$w" "$w".*
    fi
    vdet=${vdet//[$'\n\t']/ }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$op" "$sweep" "$n" "$fired" \
        "$bad" "$dmg" "$view" "$rerun" "$xf" "$vdet" "$JINFO" "$plinfo"
}
