# tests/copy-helpers.bash - shared by the copy-engine suites (stream, commit,
# mirror, mirror-nbd, snapshot, copy-faults): `load ../helpers` then
# `load ../copy-helpers`.
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The test chains are written by qemu-io only; expected contents are what
# `qemu-img convert -O raw` reads, taken before blockctl runs.
#
#   c/b/base.raw|qcow2   32M  raw, or qcow2 64k clusters (compressed clusters,
#                             zero clusters)
#   c/l1.qcow2           64k clusters, backing b/base.X (relative, in a
#                             sub-folder)
#   c/l2.qcow2           4k clusters, backing l1.qcow2
#   c/top.qcow2          2M clusters, backing l2.qcow2
#
# Every layer writes data, zeroes (`write -z`) and compressed clusters
# (`write -c`), and overwrites data, zeroes and compressed clusters of the
# layers below.

CHAIN_SIZE=32M
CHAIN_BYTES=$((32 << 20))

# build_chain DIR raw|qcow2: the chain above, in DIR
build_chain() {
    local d=$1 k=$2
    mkdir -p "$d/b" || return 1
    (
        cd "$d" || exit 1
        if [ "$k" = raw ]; then
            qemu-img create -q -f raw b/base.raw $CHAIN_SIZE || exit 1
            QIO_FMT=raw qio b/base.raw 'write -P 0x11 0 8M' 'write -P 0x12 12M 4M' \
                'write -z 2M 1M' 'write -P 0x13 30M 2M' || exit 1
        else
            mkq b/base.qcow2 $CHAIN_SIZE cluster_size=65536 || exit 1
            qio b/base.qcow2 'write -P 0x11 0 8M' 'write -P 0x12 12M 4M' \
                'write -z 2M 1M' 'write -P 0x13 30M 2M' 'write -c -P 0x14 9M 64k' \
                'write -c -P 0x15 27M 128k' 'write -z 10M 1M' || exit 1
        fi
        mkq l1.qcow2 $CHAIN_SIZE "cluster_size=65536,backing_file=b/base.$k,backing_fmt=$k" || exit 1
        qio l1.qcow2 'write -P 0x21 1M 2M' 'write -z 4M 1M' 'write -c -P 0x22 8M 64k' \
            'write -c -P 0x23 13M 128k' 'write -P 0x24 20M 3M' 'write -P 0x25 31M 64k' || exit 1
        mkq l2.qcow2 $CHAIN_SIZE "cluster_size=4096,backing_file=l1.qcow2,backing_fmt=qcow2" || exit 1
        qio l2.qcow2 'write -P 0x31 1536k 4k' 'write -z 20M 1M' 'write -c -P 0x32 24M 4k' \
            'write -P 0x33 6M 3M' 'write -z 12M 512k' 'write -P 0x34 4100k 8k' \
            'write -c -P 0x35 13376k 4k' || exit 1
        mkq top.qcow2 $CHAIN_SIZE "cluster_size=2097152,backing_file=l2.qcow2,backing_fmt=qcow2" || exit 1
        qio top.qcow2 'write -P 0x41 0 64k' 'write -z 6M 2M' 'write -c -P 0x42 16M 2M' \
            'write -P 0x43 21M 100k' 'write -P 0x44 31M 4k' 'write -z 12M 2M' || exit 1
    )
}

# setup_chains KIND...: build each chain once per file, with the guest views
# of every layer: $BATS_FILE_TMPDIR/KIND/ and $BATS_FILE_TMPDIR/KIND.views/
setup_chains() {
    local k v
    for k in "$@"; do
        build_chain "$BATS_FILE_TMPDIR/$k" "$k" || return 1
        v=$BATS_FILE_TMPDIR/$k.views
        mkdir -p "$v"
        (
            cd "$BATS_FILE_TMPDIR/$k" || exit 1
            to_raw top.qcow2 "$v/top.raw" && to_raw l2.qcow2 "$v/l2.raw" &&
                to_raw l1.qcow2 "$v/l1.raw" && to_raw "b/base.$k" "$v/base.raw"
        ) || return 1
    done
}

# use_chain KIND: a private copy of the chain in ./c (cwd: $BATS_TEST_TMPDIR);
# sets V (views folder), BASE (base path), BFMT (base format), and records
# top.map (qemu-img map of the whole chain) and the checksums of every layer
use_chain() {
    cd "$BATS_TEST_TMPDIR" || return 1
    rm -rf c
    cp -r "$BATS_FILE_TMPDIR/$1" c || return 1
    V=$BATS_FILE_TMPDIR/$1.views
    BASE=c/b/base.$1
    BFMT=$1
    qemu-img map --output=json c/top.qcow2 >top.map || return 1
    cksum c/top.qcow2 c/l2.qcow2 c/l1.qcow2 "$BASE" >"$BATS_TEST_TMPDIR/sums.before" || return 1
}

# sum_of FILE: its checksum (cksum: CRC and length) as use_chain recorded it
sum_of() {
    awk -v f="$1" '$3 == f { print $1 " " $2 }' "$BATS_TEST_TMPDIR/sums.before"
}

# unchanged FILE...: each file has the checksum use_chain recorded
unchanged() {
    local f want got
    for f in "$@"; do
        want=$(sum_of "$f")
        [ -n "$want" ] || { fail "unchanged: no checksum recorded for $f"; return 1; }
        got=$(cksum "$f" | awk '{ print $1 " " $2 }')
        [ "$got" = "$want" ] || { fail "$f changed (it must not)"; return 1; }
    done
}

# record_sums FILE...: checksums to compare with same_sums later
record_sums() {
    cksum "$@" >"$BATS_TEST_TMPDIR/sums.extra"
}

# same_sums: every file record_sums saw is as it was
same_sums() {
    local now
    now=$(cksum $(awk '{ print $3 }' "$BATS_TEST_TMPDIR/sums.extra"))
    [ "$now" = "$(cat "$BATS_TEST_TMPDIR/sums.extra")" ] || {
        fail "a file changed that must not:"
        diff <(cat "$BATS_TEST_TMPDIR/sums.extra") <(echo "$now") >&2
        return 1
    }
}

# reads_as IMG VIEW [-f FMT]: qemu-img compare says IMG (with its chain)
# reads as VIEW
reads_as() {
    local out
    out=$(qemu-img compare "${@:3}" "$1" "$2" 2>&1) ||
        { fail "qemu-img compare $1 $2: $out"; return 1; }
}

# check_ok IMG...: qemu-img check clean (exit 0) on every qcow2 image
check_ok() {
    local f fmt
    for f in "$@"; do
        fmt=$(qemu-img info -U --output=json "$f" | jq -r .format)
        [ "$fmt" = raw ] && continue
        qemu_clean "$f" || return 1
    done
}

# check_ok_or_leaks IMG...: qemu-img check exits 0 or 3 (leaks only)
check_ok_or_leaks() {
    local f fmt out rc
    for f in "$@"; do
        fmt=$(qemu-img info -U --output=json "$f" | jq -r .format)
        [ "$fmt" = raw ] && continue
        rc=0
        out=$(qemu-img check "$f" 2>&1) || rc=$?
        [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] ||
            { fail "qemu-img check $f exited $rc: $out"; return 1; }
    done
}

# backing_is IMG NAME FMT: qemu-img info shows backing-filename NAME (as
# recorded) and backing-filename-format FMT; NAME '' means no backing file
backing_is() {
    local info b f
    info=$(qemu-img info -U --output=json "$1") || { fail "qemu-img info $1 failed"; return 1; }
    b=$(jq -r '."backing-filename" // ""' <<<"$info")
    f=$(jq -r '."backing-filename-format" // ""' <<<"$info")
    [ "$b" = "$2" ] || { fail "$1: backing-filename is '$b', expected '$2'"; return 1; }
    [ "$f" = "$3" ] || { fail "$1: backing-filename-format is '$f', expected '$3'"; return 1; }
}

# info_field IMG JQ: one field of qemu-img info --output=json
info_field() {
    qemu-img info -U --output=json "$1" | jq -r "$2"
}

# zeroes_stored RESULT SRCMAP GRAN [VIEW]: zeroes are stored as zeroes.
# SRCMAP is `qemu-img map --output=json` of the source taken before; every
# GRAN-aligned chunk that lies in a range the source had as zero ("zero":
# true, "data": false: zero clusters, holes, unallocated) must have
# "data": false in `qemu-img map --output=json RESULT` (RESULT with its
# chain).  With VIEW (the expected raw contents) the check is strict: no
# GRAN chunk of a "data": true extent at depth 0 of RESULT reads all zeroes.
zeroes_stored() {
    local res=$1 src=$2 gran=$3 view=${4:-}
    qemu-img map -U --output=json "$res" >"$BATS_TEST_TMPDIR/result.map" ||
        { fail "qemu-img map $res failed"; return 1; }
    python3 - "$BATS_TEST_TMPDIR/result.map" "$src" "$gran" "$view" "$res" <<'EOF'
import json, sys
resf, srcf, gran, view, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
res = json.load(open(resf))
src = json.load(open(srcf))
zeros = []
for e in sorted(src, key=lambda e: e["start"]):
    if e["zero"] and not e["data"]:
        s, t = e["start"], e["start"] + e["length"]
        if zeros and zeros[-1][1] >= s:
            zeros[-1][1] = max(zeros[-1][1], t)
        else:
            zeros.append([s, t])
def in_zero(s, t):
    for a, b in zeros:
        if a <= s and t <= b:
            return True
    return False
vf = open(view, "rb") if view else None
bad = []
for e in res:
    if not e["data"]:
        continue
    s, t = e["start"], e["start"] + e["length"]
    c = -(-s // gran) * gran
    while c + gran <= t:
        if in_zero(c, c + gran):
            bad.append("%d+%d: the source had zeroes there, %s stores data (depth %d)" % (c, gran, name, e["depth"]))
        elif vf and e["depth"] == 0:
            vf.seek(c)
            if vf.read(gran).count(0) == gran:
                bad.append("%d+%d: a data cluster of %s that reads all zeroes" % (c, gran, name))
        c += gran
if bad:
    sys.stderr.write("zeroes stored as data in %s (%d chunks), first ones:\n  %s\n" % (name, len(bad), "\n  ".join(bad[:8])))
    sys.exit(1)
EOF
}

# depth0_within RESULT SRCMAP MAXDEPTH GRAN: every GRAN chunk RESULT holds
# itself (depth 0 in its map) overlaps a range that SRCMAP had at depth <=
# MAXDEPTH (e.g. stream --base: only what was above the base is copied)
depth0_within() {
    qemu-img map -U --output=json "$1" >"$BATS_TEST_TMPDIR/result.map" ||
        { fail "qemu-img map $1 failed"; return 1; }
    python3 - "$BATS_TEST_TMPDIR/result.map" "$2" "$3" "$4" "$1" <<'EOF'
import json, sys
res = json.load(open(sys.argv[1])); src = json.load(open(sys.argv[2]))
maxd, gran, name = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
above = [(e["start"], e["start"] + e["length"]) for e in src if e["depth"] <= maxd and e["present"]]
bad = []
for e in res:
    if e["depth"] != 0 or not e["present"]:
        continue
    s, t = e["start"], e["start"] + e["length"]
    c = s // gran * gran
    while c < t:
        a, b = max(c, s), min(c + gran, t)
        if not any(x < b and a < y for x, y in above):
            bad.append("%d+%d" % (a, b - a))
        c += gran
if bad:
    sys.stderr.write("%s holds ranges that were only below the base: %s\n" % (name, " ".join(bad[:8])))
    sys.exit(1)
EOF
}

# depth0_extents IMG: IMG's own allocation (depth-0 extents of its map)
depth0_extents() {
    qemu-img map -U --output=json "$1" | jq -c '[.[] | select(.depth == 0) |
        {start, length, zero, data}]'
}

# ---------------------------------------------------------------- servers

# sock_path NAME: a UNIX socket path for NAME, short enough for sun_path
sock_path() {
    local p=$BATS_TEST_TMPDIR/$1.sock
    if [ ${#p} -gt 100 ]; then
        [ -n "${_SHORT_SOCK_DIR:-}" ] || _SHORT_SOCK_DIR=$(mktemp -d /tmp/bnbd.XXXXXX)
        echo "$_SHORT_SOCK_DIR" >>"$BATS_TEST_TMPDIR/.sockdirs"
        p=$_SHORT_SOCK_DIR/$1.sock
    fi
    echo "$p"
}

# nbd_serve NAME QEMU-NBD-ARGS...: start qemu-nbd --fork on a UNIX socket;
# sets NBD_SOCK, NBD_URI (nbd+unix:///?socket=...) and NBD_PIDFILE.  Add
# -x EXPORT to the args and use nbd_uri_export for named exports.
nbd_serve() {
    local name=$1
    shift
    NBD_SOCK=$(sock_path "$name")
    NBD_PIDFILE=$BATS_TEST_TMPDIR/$name.pid
    rm -f "$NBD_SOCK" "$NBD_PIDFILE"
    echo "$NBD_PIDFILE" >>"$BATS_TEST_TMPDIR/.servers"
    # (fd 3 is bats' own: a daemon holding it would stall the run)
    qemu-nbd --fork --pid-file "$NBD_PIDFILE" -k "$NBD_SOCK" "$@" 3>&- ||
        { fail "qemu-nbd $* did not start"; return 1; }
    [ -s "$NBD_PIDFILE" ] || { fail "qemu-nbd wrote no pid file"; return 1; }
    NBD_URI="nbd+unix:///?socket=$NBD_SOCK"
}

# nbdkit_serve NAME PLUGIN ARGS...: nbdkit on a UNIX socket (it forks
# itself once the socket is ready); sets NBD_SOCK, NBD_URI, NBD_PIDFILE
nbdkit_serve() {
    local name=$1
    shift
    NBD_SOCK=$(sock_path "$name")
    NBD_PIDFILE=$BATS_TEST_TMPDIR/$name.pid
    rm -f "$NBD_SOCK" "$NBD_PIDFILE"
    echo "$NBD_PIDFILE" >>"$BATS_TEST_TMPDIR/.servers"
    nbdkit --unix "$NBD_SOCK" --pidfile "$NBD_PIDFILE" "$@" 3>&- ||
        { fail "nbdkit $* did not start"; return 1; }
    local n=50
    while [ ! -s "$NBD_PIDFILE" ] && [ $n -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
    [ -s "$NBD_PIDFILE" ] || { fail "nbdkit wrote no pid file"; return 1; }
    NBD_URI="nbd+unix:///?socket=$NBD_SOCK"
}

# running PID: PID is a process that has not exited (a daemon's zombie,
# waiting for a slow init to reap it, has: it holds no file or lock)
running() {
    local st
    kill -0 "$1" 2>/dev/null || return 1
    st=$(cut -d ')' -f 2 "/proc/$1/stat" 2>/dev/null | cut -d ' ' -f 2) || return 1
    [ "$st" != Z ]
}

# server_stop PIDFILE [SIGNAL]: stop a server and wait until it is gone
# (it has then flushed and released its locks)
server_stop() {
    local pid n=100
    pid=$(cat "$1" 2>/dev/null) || return 0
    [ -n "$pid" ] || return 0
    kill -"${2:-TERM}" "$pid" 2>/dev/null || return 0
    while running "$pid" && [ $n -gt 0 ]; do sleep 0.05; n=$((n - 1)); done
    if running "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true   # (it may have just gone)
        sleep 0.2
    fi
    rm -f "$1"
}

# ------------------------------------------------------ background jobs

# bg_start OUT ERR CMD...: run CMD in the background; sets BG_PID
bg_start() {
    local out=$1 err=$2
    shift 2
    "$@" >"$out" 2>"$err" 3>&- &
    BG_PID=$!
    echo "$BG_PID" >>"$BATS_TEST_TMPDIR/.bgpids"
}

# bg_wait PID SECS: wait for it; sets BG_STATUS (124 if it had to be killed
# after SECS seconds) and BG_SECS (seconds waited)
bg_wait() {
    local pid=$1 n=$(($2 * 20)) start=$SECONDS
    while kill -0 "$pid" 2>/dev/null && [ $n -gt 0 ]; do sleep 0.05; n=$((n - 1)); done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        BG_STATUS=124
    else
        BG_STATUS=0
        wait "$pid" || BG_STATUS=$?
    fi
    BG_SECS=$((SECONDS - start))
}

# wait_file FILE SECS: until FILE exists
wait_file() {
    local n=$(($2 * 20))
    while [ ! -e "$1" ] && [ $n -gt 0 ]; do sleep 0.05; n=$((n - 1)); done
    [ -e "$1" ] || { fail "$1 did not appear within $2 s"; return 1; }
}

# copy_teardown: kill what the test started (background jobs, servers)
copy_teardown() {
    local p f
    if [ -f "$BATS_TEST_TMPDIR/.bgpids" ]; then
        while read -r p; do kill -KILL "$p" 2>/dev/null; done <"$BATS_TEST_TMPDIR/.bgpids"
    fi
    if [ -f "$BATS_TEST_TMPDIR/.servers" ]; then
        while read -r f; do server_stop "$f" KILL; done <"$BATS_TEST_TMPDIR/.servers"
    fi
    if [ -f "$BATS_TEST_TMPDIR/.sockdirs" ]; then
        while read -r f; do rm -rf "$f"; done <"$BATS_TEST_TMPDIR/.sockdirs"
    fi
    return 0
}

# one_line_error NAME: $stderr (bats run --separate-stderr) is one line
# naming NAME
one_line_error() {
    [ -n "$stderr" ] || { fail "no error message on stderr"; return 1; }
    [ "${#stderr_lines[@]}" -eq 1 ] ||
        { fail "expected a one-line error, got ${#stderr_lines[@]} lines: $stderr"; return 1; }
    [[ $stderr == *"$1"* ]] || { fail "the error does not name $1: $stderr"; return 1; }
}

# failed_cleanly: after run --separate-stderr: non-zero, not a signal, not
# a timeout, with a message
failed_cleanly() {
    [ "$status" -ne 0 ] || { fail "exited 0; stdout: $output; stderr: $stderr"; return 1; }
    [ "$status" -ne 124 ] || { fail "timed out"; return 1; }
    [ "$status" -lt 128 ] || { fail "killed by signal $((status - 128)): $stderr"; return 1; }
    [ "$status" -ne 64 ] || { fail "usage error: $stderr"; return 1; }
    [ -n "$stderr" ] || { fail "no error message"; return 1; }
}

# wait_progress FILE SECS: until the --progress=json lines in FILE show a
# copy under way (0 < done < total)
wait_progress() {
    local n=$(($2 * 20)) l
    while [ $n -gt 0 ]; do
        l=$(tail -n 1 "$1" 2>/dev/null)
        if [ -n "$l" ] && jq -e '.done > 0 and .done < .total' <<<"$l" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
        n=$((n - 1))
    done
    fail "no progress in $1 within $2 s: $(tail -n 3 "$1" 2>/dev/null)"
}
