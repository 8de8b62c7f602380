# tests/agent-helpers.bash - shared by the live suites (agent-snap,
# agent-bitmap): `load ../helpers`, `load ../copy-helpers`, then
# `load ../agent-helpers`.
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The same disks are served either by `blockctl agent` or by
# qemu-storage-daemon 7.2 (QSD), so that one QMP script runs on both:
#   daemon_up blockctl|qsd DISK=FILE...
# sets QMP (the control socket), NBD (the NBD socket) and FLAVOUR.  On QSD
# each disk NAME is a qcow2 node called NAME over a file node NAME-file,
# exported under NAME (writable, with the bitmaps QSD_BITMAPS names),
# which is how the CLI's --agent finds it (query-block-exports).  A
# script names nodes, not devices (QSD has no devices).

ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
NBD_WRITER=${NBD_WRITER:-$ROOT/${BUILD:-build}/tests/tools/nbd-writer}
PY=/usr/bin/python3

# setup, teardown: each test in its own folder (vm/, new/), servers stopped
setup() {
    requires_agent
    cd "$BATS_TEST_TMPDIR" || return 1
    mkdir -p vm new
}

teardown() {
    copy_teardown
}

requires_agent() {
    requires_qemu
    [ -x "$PY" ] || skip "no $PY"
    "$PROG" agent --help >/dev/null 2>&1 || skip "no agent"
}

requires_qsd() {
    requires_cmd qemu-storage-daemon
}

requires_writer() {
    [ -x "$NBD_WRITER" ] || skip "no $NBD_WRITER (make unit builds it)"
}

# daemon_up blockctl|qsd NAME=FILE...: serve the disks; sets QMP, NBD, FLAVOUR
daemon_up() {
    local kind=$1 d name file args=()
    shift
    FLAVOUR=$kind
    QMP=$(sock_path "$kind-qmp")
    NBD=$(sock_path "$kind-nbd")
    local pidf="$BATS_TEST_TMPDIR/$kind.pid"
    echo "$pidf" >>"$BATS_TEST_TMPDIR/.servers"
    if [ "$kind" = blockctl ]; then
        for d in "$@"; do args+=(--disk "$d"); done
        "$PROG" agent --qmp "$QMP" --nbd "unix:$NBD" --state "$BATS_TEST_TMPDIR/agent.state" \
            "${args[@]}" --daemonize --pidfile "$pidf" 2>>"$BATS_TEST_TMPDIR/agent.log" 3>&- ||
            { fail "the agent did not start: $(cat "$BATS_TEST_TMPDIR/agent.log")"; return 1; }
        return 0
    fi
    for d in "$@"; do
        name=${d%%=*}
        file=${d#*=}
        args+=(--blockdev "driver=file,node-name=$name-file,filename=$file"
            --blockdev "driver=qcow2,node-name=$name,file=$name-file")
        local bms=""
        [ -z "${QSD_BITMAPS:-}" ] || bms=",bitmaps.0=$QSD_BITMAPS"
        args+=(--export "type=nbd,id=$name,node-name=$name,name=$name,writable=on$bms")
    done
    qemu-storage-daemon --nbd-server "addr.type=unix,addr.path=$NBD" "${args[@]}" \
        --chardev "socket,path=$QMP,server=on,wait=off,id=mon0" --monitor chardev=mon0 \
        --pidfile "$pidf" --daemonize 2>>"$BATS_TEST_TMPDIR/qsd.log" 3>&- ||
        { fail "qemu-storage-daemon did not start: $(cat "$BATS_TEST_TMPDIR/qsd.log")"; return 1; }
}

# daemon_down: stop it cleanly (it flushes, stores bitmaps, drops locks)
daemon_down() {
    server_stop "$BATS_TEST_TMPDIR/$FLAVOUR.pid"
}

# disk_uri NAME: the disk's NBD export
disk_uri() {
    echo "nbd+unix:///$1?socket=$NBD"
}

# qmp MSG...: send the messages, print each reply (events dropped), one
# compact JSON line each, "id" removed
qmp() {
    local out
    out=$("$PY" "$BATS_TEST_DIRNAME/qmp-talk.py" "$QMP" "$@") ||
        { fail "qmp-talk failed on $QMP"; return 1; }
    tail -n +3 <<<"$out" | grep -v '^<EOF>$' |
        jq -c 'select(has("event") | not) | select(.id != "end") | del(.id)'
}

# qmp_ok MSG: one command that must succeed; prints its return
qmp_ok() {
    local r
    r=$(qmp "$1") || return 1
    jq -e 'has("return")' <<<"$r" >/dev/null ||
        { fail "$FLAVOUR: $1 failed: $r"; return 1; }
    jq -c .return <<<"$r"
}

# qmp_script FILE: each line "REQUEST<TAB>EXPECTED"; EXPECTED is
# {"return": VALUE} or {"error": "DESC"}, or per flavour
# {"blockctl": ..., "qsd": ...} where the agent differs on purpose
# (its documented extensions).  @D@ in either stands for the test folder.
# Every reply must be as expected; all mismatches are printed.
qmp_script() {
    local reqs=() exps=() line req exp n=0 bad=0 got
    while IFS=$'\t' read -r req exp; do
        [ -n "$req" ] && [ "${req:0:1}" != "#" ] || continue
        reqs+=("${req//@D@/$BATS_TEST_TMPDIR}")
        exps+=("${exp//@D@/$BATS_TEST_TMPDIR}")
    done <"$1"
    mapfile -t got < <(qmp "${reqs[@]}")
    [ "${#got[@]}" -eq "${#reqs[@]}" ] ||
        { fail "$FLAVOUR: ${#reqs[@]} requests, ${#got[@]} replies: ${got[*]}"; return 1; }
    for ((n = 0; n < ${#reqs[@]}; n++)); do
        exp=$(jq -c --arg f "$FLAVOUR" 'if has($f) then .[$f] else . end' <<<"${exps[$n]}")
        line=$(jq -c 'if has("error") then {error: .error.desc} else {return} end' <<<"${got[$n]}")
        if [ "$line" != "$exp" ]; then
            echo "$FLAVOUR: ${reqs[$n]}" >&2
            echo "  expected $exp" >&2
            echo "  got      $line" >&2
            bad=$((bad + 1))
        fi
    done
    [ "$bad" -eq 0 ] || { fail "$FLAVOUR: $bad of ${#reqs[@]} replies differ"; return 1; }
}

# writer_start NAME URI RATE SECS [ARGS...]: nbd-writer in the background
# with a model (NAME.model) and read-back checks; sets WPID_NAME
writer_start() {
    local name=$1 uri=$2 rate=$3 secs=$4
    shift 4
    bg_start "$BATS_TEST_TMPDIR/$name.wout" "$BATS_TEST_TMPDIR/$name.werr" \
        "$NBD_WRITER" "$uri" "$rate" "$secs" --flush-every 32 --read-every 4 \
        --model "$BATS_TEST_TMPDIR/$name.model" --seed "$RANDOM" "$@"
    printf -v "WPID_$name" '%s' "$BG_PID"
}

# writer_wait NAME: it ended by itself with no error and no stale read
writer_wait() {
    local v="WPID_$1" out
    bg_wait "${!v}" 60
    out=$(cat "$BATS_TEST_TMPDIR/$1.wout")
    [ "$BG_STATUS" -eq 0 ] ||
        { fail "writer $1 exited $BG_STATUS: $out $(cat "$BATS_TEST_TMPDIR/$1.werr")"; return 1; }
    jq -e '.writes > 0 and .errors == 0 and .stale_reads == 0 and .reads > 0' <<<"$out" >/dev/null ||
        { fail "writer $1: $out"; return 1; }
    echo "# writer $1: $out" >&3
}

# model_check NAME IMG BASE-RAW: IMG (with its chain, as qemu-img reads it)
# holds, in every block the writer wrote, one of the writes its model
# allows, and elsewhere what BASE-RAW holds
model_check() {
    local raw="$BATS_TEST_TMPDIR/$1.final.raw"
    qemu-img convert -U -O raw "$2" "$raw" || { fail "qemu-img convert $2 failed"; return 1; }
    "$PY" - "$raw" "$BATS_TEST_TMPDIR/$1.model" "$3" <<'EOF' || return 1
import struct, sys
img, model, base = sys.argv[1:4]
ok = {}
for line in open(model):
    b, i = line.split()
    ok.setdefault(int(b), set()).add(int(i))
bad = []
with open(img, 'rb') as f, open(base, 'rb') as g:
    blk = 0
    while True:
        d, e = f.read(4096), g.read(4096)
        if not d:
            break
        if blk in ok:
            i = struct.unpack('<Q', d[:8])[0]
            want = struct.pack('<Q', i) + bytes([i & 0xff]) * 4088
            if i not in ok[blk] or d != want:
                bad.append('block %d holds write %d (allowed: %s)' % (blk, i, sorted(ok[blk])[:4]))
        elif d != e:
            bad.append('block %d, never written, differs from the base' % blk)
        blk += 1
if not ok:
    bad.append('the model is empty')
if bad:
    sys.stderr.write('%s: %d bad blocks, first ones:\n  %s\n' % (img, len(bad), '\n  '.join(bad[:8])))
    sys.exit(1)
EOF
}
