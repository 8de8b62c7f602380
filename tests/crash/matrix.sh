#!/bin/bash
# tests/crash/matrix.sh - the whole fault matrix (`make crash`): every point
# of every sweep of every operation (see lib.bash), JOBS points at a time.
# Prints a table per operation, then each failure with its reproducer.
#
#   matrix.sh [OP...]                 all points (default: every operation)
#   K=N matrix.sh [OP...]             the first, every Nth and the last point
#   matrix.sh --point OP SWEEP N      one point, its folder kept and shown
#   matrix.sh --list                  the operations and their call counts
#   matrix.sh --repro OP SWEEP N      a stand-alone script for the point
#   SWEEPS='any:kill pwrite:torn' matrix.sh ...   only these sweeps
#
# Sweeps (lib.bash): KIND:ACTION, an I/O call kind and what happens at its
# Nth call (eio, enospc, short, torn, kill), and the power-loss sweeps
# any:pl-none, any:pl-all, any:pl-r1, any:pl-r2: killed at the Nth call
# with a write log, then the files made a state a power failure there
# could leave (what was synced, and none, all or a random subset of the
# rest).  The live operations (live-*: an agent killed under a guest's
# writes, live.bash) have the sweeps any:kill and the four power-loss ones,
# at CRASH_LIVE_POINTS points each (150); e.g.
#   SWEEPS='any:pl-none any:pl-r1' K=3 matrix.sh live-mirror live-commit
#
# Exit status: 0 when no point failed (known failures aside), 1 otherwise.
# The work folder (CRASH_ROOT, /dev/shm by default) is removed at the end
# unless a point failed (its folder then stays for inspection) or
# CRASH_KEEP=1.
# SPDX-License-Identifier: GPL-2.0-or-later
set -u
. "$(dirname "$0")/lib.bash"

# (all in a function: bash reads it whole, so editing this file while a
# long run goes on does not disturb it)
main() {
    crash_init || exit 1
    own_root=${CRASH_OWN_ROOT:-1}
    # a copy of the binary: a rebuild during a long run does not change it
    cp -f "$PROG" "$CRASH_ROOT/blockctl" && PROG=$CRASH_ROOT/blockctl || exit 1

    if [ "${1:-}" = --point ]; then
        [ $# -eq 4 ] || { echo "usage: $0 --point OP SWEEP N" >&2; exit 64; }
        export CRASH_KEEP=1
        crash_prepare "$2" || exit 1
        line=$(crash_point "$2" "$3" "$4")
        # (not split at tabs: IFS whitespace would merge empty fields)
        IFS=$'\x1f' read -r o s n fired bad dmg view rerun xf det jinfo plinfo <<<"${line//$'\t'/$'\x1f'}"
        op_def "$o"
        w=$CRASH_ROOT/pts/$o/${s%%:*}-${s#*:}-$n
        echo "operation:  $o (fixture $FIX): blockctl ${CMD[*]}"
        echo "fault:      BLOCKCTL_FAULT=${s%%:*}:$n:${s#*:}  (fired: $fired)"
        echo "verdict:    bad exit $bad, damaged $dmg, wrong view $view, failed rerun $rerun, known $xf"
        [ -n "${det// /}" ] && echo "details:    $det"
        [ "${jinfo:--}" != - ] && echo "journal:    $jinfo (ACTION:STEP:BYTES RESUMED:BYTES LEFT)"
        [ "${plinfo:--}" != - ] && echo "power loss: $plinfo"
        if _is_live "$o"; then
            echo "this point: $w (the agent's log $w.alog, the guest's $w.log, $w.durable," \
                "$w.werr; the recovery's $w.rerun.out)"
            [[ $s == *:pl-* ]] && echo "            the agent's write log $w.iolog, the files" \
                "before it started $w.before (inodes: $w.inodes)"
        else
            echo "before:     $CRASH_ROOT/ref/$o/before"
            echo "after:      $CRASH_ROOT/ref/$o/after"
            echo "this point: $w (stdout, stderr: $w.out, $w.err; the rerun's: $w.rerun.out, $w.rerun.err)"
        fi
        for f in "$w.err" "$w.rerun.err"; do
            [ -s "$f" ] && { echo "--- $f"; head -n 20 "$f"; }
        done
        [ $((bad + dmg + view + rerun)) -eq 0 ]
        exit
    fi

    if [ "${1:-}" = --repro ]; then
        # a shell script that rebuilds the fixture (qemu-img, qemu-io) in a new
        # folder and runs the point, for a report
        [ $# -eq 4 ] || { echo "usage: $0 --repro OP SWEEP N" >&2; exit 64; }
        op_def "$2" || exit 64
        [ "$own_root" = 1 ] && rm -rf "$CRASH_ROOT"
        if _is_live "$2"; then
            # (the point runs as the matrix runs it, in a work folder of its own)
            echo "#!/bin/bash"
            echo "# $2 (an agent killed at its call $4: tests/crash/matrix.sh --point $2 $3 $4)"
            echo "# usage: bash THIS /path/to/blockctl  (in a new folder under /dev/shm or /tmp)"
            echo 'PROG=$(realpath "${1:-$(command -v blockctl)}") CRASH_KEEP=1 CRASH_OWN_ROOT=0 \'
            echo '    CRASH_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/blockctl-repro.XXXXXX") \'
            printf '    exec bash %q --point %q %q %q\n' "$CRASH_LIB_DIR/matrix.sh" "$2" "$3" "$4"
            exit 0
        fi
        echo "#!/bin/bash"
        echo "# $2, BLOCKCTL_FAULT=${3%%:*}:$4:${3#*:} (tests/crash/matrix.sh --point $2 $3 $4)"
        echo "# usage: bash THIS /path/to/blockctl  (runs in a new folder under /tmp)"
        echo 'PROG=${1:-blockctl}'
        printf 'CRASH_TESTS_DIR=%q\n' "$CRASH_TESTS_DIR"
        declare -f _qio _fx_chain "fx_$FIX"
        echo 'd=$(mktemp -d /tmp/blockctl-repro.XXXXXX) && cd "$d" && echo "in $d" || exit 1'
        echo "fx_$FIX || exit 1"
        echo 'export BLOCKCTL_STATE_DIR=$d.state BLOCKCTL_CHECKPOINT_SECS=0'
        case ${3#*:} in
        pl-*)
            # a power failure: killed with a write log, then the state built
            sub=${3#*:pl-}
            case $sub in r*) sub=random:$2:${3%%:*}:$4:${sub#r} ;; esac
            echo 'mkdir "$d.before" && cp -a . "$d.before" && stat -c "%i $d/%n" -- * >"$d.inodes"'
            printf 'BLOCKCTL_IOLOG=$d.log BLOCKCTL_FAULT=%q "$PROG"' "${3%%:*}:$4:kill"
            printf ' %q' "${CMD[@]}"
            echo '; echo "exit status $?"'
            printf '/usr/bin/python3 %q "$d.log" "$d.inodes" "$d.before" %q\n' \
                "$CRASH_TESTS_DIR/tools/iolog-replay.py" "$sub" ;;
        *)
            printf 'BLOCKCTL_FAULT=%q "$PROG"' "${3%%:*}:$4:${3#*:}"
            printf ' %q' "${CMD[@]}"
            echo '; echo "exit status $?"' ;;
        esac
        echo '"$PROG" job list'
        echo 'for f in *.qcow2 *.qcow2.part; do [ -e "$f" ] && { qemu-img check "$f" >/dev/null 2>&1; echo "qemu-img check $f: $?"; }; done'
        exit 0
    fi

    if [ "${1:-}" = --list ]; then
        for op in "${CRASH_OPS[@]}"; do
            crash_prepare "$op" || exit 1
            op_def "$op"
            printf '%-16s %s\n' "$op" "$(awk '{ printf "%s=%s ", $1, $2 }' "$CRASH_ROOT/ref/$op/counts")"
            printf '%16s blockctl %s\n' '' "${CMD[*]}"
        done
        [ "$own_root" = 1 ] && [ "${CRASH_KEEP:-0}" != 1 ] && rm -rf "$CRASH_ROOT"
        exit 0
    fi

    ops=("$@")
    [ ${#ops[@]} -gt 0 ] || ops=("${CRASH_OPS[@]}")
    k=${K:-1}
    start=$SECONDS
    echo "# blockctl fault matrix: $PROG"
    echo "# work folder $CRASH_ROOT, JOBS=${JOBS:-$(nproc)}, every ${k}th point"
    for op in "${ops[@]}"; do
        t=$SECONDS
        crash_run "$op" "$k" || { echo "# $op: could not prepare" >&2; exit 1; }
        echo "# $op: $(wc -l <"$CRASH_ROOT/res/$op") points in $((SECONDS - t)) s"
    done
    echo
    crash_table "${ops[@]}"
    echo
    crash_jtable "${ops[@]}"
    echo
    echo "# $((SECONDS - start)) s"
    fails=$(for op in "${ops[@]}"; do crash_failures "$op"; done)
    xfails=$(cat "${ops[@]/#/$CRASH_ROOT/res/}" | awk -F'\t' '$9 == 1' | wc -l)
    if [ -n "$fails" ]; then
        echo
        echo "# failures (folders under $CRASH_ROOT/pts):"
        echo "$fails"
    fi
    if [ "$xfails" -gt 0 ]; then
        echo
        echo "# $xfails known failures (tests/crash/known-failures):"
        for op in "${ops[@]}"; do crash_failures "$op" known; done
    fi
    if [ -z "$fails" ]; then
        [ "$own_root" = 1 ] && [ "${CRASH_KEEP:-0}" != 1 ] && rm -rf "$CRASH_ROOT"
        exit 0
    fi
    exit 1
}

main "$@"
exit
