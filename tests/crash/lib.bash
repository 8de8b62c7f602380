# tests/crash/lib.bash - the fault matrix (sourced by faults.bats and matrix.sh)
# SPDX-License-Identifier: GPL-2.0-or-later
#
# For each operation (create, snapshot, stream, commit, mirror, bitmap,
# check -r: see op_def) and each sweep (an I/O call kind and what happens
# there: eio, enospc, short, torn, kill; see CRASH_SWEEPS), the operation
# runs once per point N = 1..(number of such calls it makes), with
# BLOCKCTL_FAULT=KIND:N:ACTION (lib/io.h): exactly one call fails, or the
# process dies there.  After each point:
#
#   exit      an error exits 1 with a message (check: 0-3), a kill 137;
#             never another signal, never a hang
#   damaged   every qcow2 image in the folder passes `qemu-img check`
#             with 0 or 3 (leaks only)
#   view      every image a guest or a script uses is as before or as
#             after: its contents (qemu-img compare with the saved views,
#             through its chain) and its metadata (qemu-img info: backing
#             file, bitmaps; bitmap contents as qemu-nbd -B exports them)
#             are those of the saved "before" or "after" copy (a bitmap
#             left "in use" by a kill counts as kept where the command's
#             manual says so: stream, commit, mirror -n's target);
#             images the operation only reads are unchanged byte for
#             byte; an operation documented to leave nothing on failure
#             (create, snapshot, a new mirror target) left nothing; an
#             exit 0 means the after state
#   rerun     the documented recovery (run the command again; for
#             snapshot first remove the overlays; for a new incremental
#             mirror target that exists, clear the bitmap; nothing when
#             the after state is already there, e.g. a mirror killed after
#             its rename) exits 0 and leaves exactly the after state: the same
#             files, each layer alone reading as the fault-free run's,
#             the same metadata, qemu-img check 0 or 3 (0 for check -r)
#   journal   a command that keeps a job journal (stream, commit, mirror,
#             snapshot, bitmap: JOB in op_def) and did not end leaves at
#             most one, and no
#             other command leaves any (each run has a state folder of its
#             own, $w.state); when one is left, `job list --output=json`
#             names the job, not running, with AUTH authoritative and
#             reading as before or after; then `job resume` (at odd points)
#             leaves exactly the after state and no journal, its copy
#             starting where the journal says and copying at most what
#             was left, or `job abort` (at even points) leaves no journal
#             and the GUEST images as before, and the recovery above the
#             after state (see _job_end)
#
# The power-loss sweeps (ACTION pl-none, pl-all, pl-r1, pl-r2) kill the run
# before the Nth call with a write log (BLOCKCTL_IOLOG, lib/io.h), then
# make the files a state a power failure there could leave
# (tests/tools/iolog-replay.py: what was flushed, and none, all or a random
# subset of the rest) before the same checks.  (A TARGET.part may fail
# qemu-img check there: it is written without ordering syncs between
# checkpoints, and job resume repairs it.)  The live operations
# (live.bash) have the same power-loss sweeps, on the agent's files.
#
# The before and after states come from the fixture (built with qemu-img
# and qemu-io only) and from one fault-free run, which also counts the
# calls (BLOCKCTL_FAULT_COUNT) so that the sweeps know their N.  Points
# that leave the same bytes (and end the same way) share one verdict, and
# files byte for byte as in a checked reference state need no qemu-img.
#
# Points whose failure is known and owned elsewhere are listed in
# tests/crash/known-failures: they are reported as "xfail", not failed.
#
# Environment: PROG (the blockctl binary), JOBS (points run in parallel),
# SWEEPS (only these sweeps, e.g. 'any:kill pwrite:torn'), CRASH_NOCACHE=1
# (no sharing of verdicts between points that leave the same files),
# CRASH_ROOT (work folder, default a new one under /dev/shm), CRASH_KEEP=1
# keeps the folders of passing points too, CRASH_TIMEOUT (seconds per run).

CRASH_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CRASH_TESTS_DIR=$(cd "$CRASH_LIB_DIR/.." && pwd)
PROG=${PROG:-$CRASH_TESTS_DIR/../blockctl}
PROG=$(cd "$(dirname "$PROG")" && pwd)/$(basename "$PROG")
CRASH_TIMEOUT=${CRASH_TIMEOUT:-60}
CRASH_KNOWN=${CRASH_KNOWN:-$CRASH_LIB_DIR/known-failures}
export LC_ALL=C
# a checkpoint of a job's journal after each window of its copy (every
# run has a state folder of its own: BLOCKCTL_STATE_DIR, set per run)
export BLOCKCTL_CHECKPOINT_SECS=0
unset BLOCKCTL_IOLOG

# Every operation of the matrix, in the order of the table.
CRASH_OPS=(create create-raw create-prealloc snapshot stream stream-raw
    stream-base commit commit-base commit-top mirror mirror-raw mirror-c
    mirror-shallow mirror-n mirror-bitmap mirror-bitmap-B bitmap-add
    bitmap-remove bitmap-clear bitmap-merge check-leaks check-all check-all-big)

# KIND:ACTION.  KIND is a BLOCKCTL_FAULT operation whose calls are counted
# by BLOCKCTL_FAULT_COUNT; "any" counts every call, so any:kill stops the
# process before each call in turn (a kill before a read leaves what a
# kill before the next write leaves: this covers every point once).
# ACTION pl-SUBSET: a power failure before the call (see crash_point):
# none of the writes not yet flushed reach the disk, all of them, or a
# random subset (r1, r2: two seeds)
CRASH_SWEEPS=(pread:eio pread:enospc pwrite:eio pwrite:enospc pwrite:short
    sync:eio sync:enospc ftruncate:eio ftruncate:enospc fallocate:eio
    fallocate:enospc rename:eio dirsync:eio open:eio unlink:eio any:kill pwrite:torn
    any:pl-none any:pl-all any:pl-r1 any:pl-r2)
# SWEEPS (environment): only these
if [ -n "${SWEEPS:-}" ]; then
    read -r -d "" -a CRASH_SWEEPS <<<"$SWEEPS" || true
fi

# ------------------------------------------------------------ operations

# op_def OP: describe OP in these variables
#   FIX         the fixture (fx_NAME) it runs on
#   CMD         the blockctl arguments (run in the fixture's folder)
#   GUEST       images whose contents (through their chain) must read as
#               before or as after at every point; "absent" is a state
#   TRACK       images whose metadata must be as before or as after
#               (GUEST images are tracked too)
#   RO          images the operation only reads: unchanged, byte for byte
#   FREE        images whose own contents are not compared in the end
#               (documented to be left so, e.g. commit --top's dropped TOP)
#   BMCHECK     IMG:BITMAP pairs whose contents are part of IMG's metadata
#   CLEAN       images that must pass qemu-img check with 0 in the end
#   PRE         recovery steps before the rerun (eval'd in the folder)
#   RECOVER     the whole recovery instead of PRE and the rerun (eval'd)
#   FAIL_BEFORE 1: an error exit (not a kill) must leave the before state
#               for GUEST images and the same files as before
#   INUSE_OK    1: bitmaps left "in use" by a kill are documented (the
#               in-use flag is ignored in the metadata)
#   RC_OK       exit statuses allowed for an injected error
#   SAME        GUEST images whose contents the operation does not change
#   EQ          NEW=OLD: the after view of NEW is the before view of OLD
#   BROKEN      images corrupt before (check -r all repairs them): until
#               repaired, qemu-img check may exit 2, with no more
#               corruptions than before
#   JOB         the type of the job journal the command keeps (stream,
#               commit, mirror, snapshot, bitmap; empty: none, and none
#               may be left)
#   AUTH        the image a journal must name as authoritative (several,
#               space-separated: a snapshot's disks, named ", "-joined)
# The journaled commands copy in small windows (a 512k buffer for two
# requests), with a checkpoint of their journal after each window (BLOCKCTL_CHECKPOINT_SECS=0):
# a kill finds them at every step of the copy, and a resume has something
# to skip.
op_def() {
    FIX='' CMD=() GUEST=() TRACK=() RO=() FREE=() BMCHECK=() CLEAN=() PRE='' RECOVER=''
    FAIL_BEFORE=0 INUSE_OK=0 RC_OK='0 1' SAME=() EQ=() JOB='' AUTH='' BROKEN=()
    local chain=(top.qcow2 mid.qcow2 base.qcow2) rchain=(top.qcow2 mid.qcow2 base.raw)
    local w=(--buf-size 512k --requests 2)
    case $1 in
    create)
        FIX=chain CMD=(create -f qcow2 -b top.qcow2 -F qcow2 new.qcow2)
        GUEST=(new.qcow2) RO=("${chain[@]}") FAIL_BEFORE=1 EQ=(new.qcow2=top.qcow2) ;;
    create-raw)
        FIX=chain-raw CMD=(create -f qcow2 -o cluster_size=4k -b base.raw -F raw new.qcow2)
        GUEST=(new.qcow2) RO=("${rchain[@]}") FAIL_BEFORE=1 EQ=(new.qcow2=base.raw) ;;
    create-prealloc)
        # (small clusters, metadata preallocated: a few hundred calls)
        FIX=chain CMD=(create -f qcow2 -o cluster_size=1k,preallocation=metadata new.qcow2 4M)
        GUEST=(new.qcow2) RO=("${chain[@]}") FAIL_BEFORE=1 ;;
    snapshot)
        FIX=disks CMD=(snapshot top.qcow2 s1.qcow2 base.raw s2.qcow2 d3.qcow2 s3.qcow2)
        GUEST=(s1.qcow2 s2.qcow2 s3.qcow2) RO=("${rchain[@]}" d3.qcow2)
        PRE='rm -f s1.qcow2 s2.qcow2 s3.qcow2' FAIL_BEFORE=1
        JOB=snapshot AUTH='top.qcow2 base.raw d3.qcow2'
        EQ=(s1.qcow2=top.qcow2 s2.qcow2=base.raw s3.qcow2=d3.qcow2) ;;
    stream)
        FIX=chain CMD=(stream "${w[@]}" top.qcow2) GUEST=(top.qcow2) RO=(mid.qcow2 base.qcow2)
        JOB=stream AUTH=top.qcow2
        INUSE_OK=1 SAME=(top.qcow2) ;;
    stream-raw)
        FIX=chain-raw CMD=(stream "${w[@]}" top.qcow2) GUEST=(top.qcow2) RO=(mid.qcow2 base.raw)
        JOB=stream AUTH=top.qcow2
        INUSE_OK=1 SAME=(top.qcow2) ;;
    stream-base)
        FIX=chain CMD=(stream "${w[@]}" --base base.qcow2 top.qcow2) GUEST=(top.qcow2)
        JOB=stream AUTH=top.qcow2
        RO=(mid.qcow2 base.qcow2) INUSE_OK=1 SAME=(top.qcow2) ;;
    commit)
        FIX=chain CMD=(commit "${w[@]}" top.qcow2) GUEST=(top.qcow2) TRACK=(mid.qcow2)
        JOB=commit AUTH=top.qcow2
        RO=(base.qcow2) INUSE_OK=1 SAME=(top.qcow2) ;;
    commit-base)
        FIX=chain-raw CMD=(commit "${w[@]}" --base base.raw top.qcow2) GUEST=(top.qcow2)
        JOB=commit AUTH=top.qcow2
        RO=(mid.qcow2) INUSE_OK=1 SAME=(top.qcow2) ;;
    commit-top)
        FIX=chain CMD=(commit "${w[@]}" --top mid.qcow2 top.qcow2) GUEST=(top.qcow2)
        JOB=commit AUTH=top.qcow2
        FREE=(mid.qcow2) INUSE_OK=1 SAME=(top.qcow2) ;;
    mirror)
        FIX=chain CMD=(mirror "${w[@]}" -O qcow2 top.qcow2 t.qcow2) GUEST=(top.qcow2 t.qcow2)
        JOB=mirror AUTH=top.qcow2
        RO=("${chain[@]}") FAIL_BEFORE=1 EQ=(t.qcow2=top.qcow2) ;;
    mirror-raw)
        FIX=chain CMD=(mirror "${w[@]}" -O raw top.qcow2 t.raw) GUEST=(top.qcow2 t.raw)
        JOB=mirror AUTH=top.qcow2
        RO=("${chain[@]}") FAIL_BEFORE=1 EQ=(t.raw=top.qcow2) ;;
    mirror-c)
        FIX=chain CMD=(mirror "${w[@]}" -O qcow2 -c top.qcow2 t.qcow2) GUEST=(top.qcow2 t.qcow2)
        JOB=mirror AUTH=top.qcow2
        RO=("${chain[@]}") FAIL_BEFORE=1 EQ=(t.qcow2=top.qcow2) ;;
    mirror-shallow)
        FIX=chain CMD=(mirror "${w[@]}" --shallow -O qcow2 top.qcow2 t.qcow2) GUEST=(top.qcow2 t.qcow2)
        JOB=mirror AUTH=top.qcow2
        RO=("${chain[@]}") FAIL_BEFORE=1 EQ=(t.qcow2=top.qcow2) ;;
    mirror-n)
        FIX=mirror-n CMD=(mirror "${w[@]}" -n top.qcow2 tn.qcow2) GUEST=(top.qcow2) TRACK=(tn.qcow2)
        JOB=mirror AUTH=top.qcow2
        RO=("${chain[@]}") INUSE_OK=1 ;;
    mirror-bitmap)
        FIX=incr CMD=(mirror "${w[@]}" -n --sync=bitmap --bitmap=inc --clear-bitmap top.qcow2 inc.qcow2)
        JOB=mirror AUTH=top.qcow2
        GUEST=(top.qcow2) TRACK=(inc.qcow2) RO=(mid.qcow2 base.qcow2)
        BMCHECK=(top.qcow2:inc top.qcow2:tb) SAME=(top.qcow2) ;;
    mirror-bitmap-B)
        FIX=incr CMD=(mirror "${w[@]}" --sync=bitmap --bitmap=inc --clear-bitmap -B inc.qcow2 -F qcow2
            -O qcow2 top.qcow2 i1.qcow2)
        JOB=mirror AUTH=top.qcow2
        GUEST=(top.qcow2 i1.qcow2) RO=(mid.qcow2 base.qcow2 inc.qcow2)
        BMCHECK=(top.qcow2:inc top.qcow2:tb) SAME=(top.qcow2) EQ=(i1.qcow2=top.qcow2)
        # TARGET exists only once complete: then only the bitmap is left
        # to clear ("'i1.qcow2' is complete, but bitmap 'inc' was not
        # cleared", or killed between the two)
        RECOVER='if [ -e i1.qcow2 ]; then exec "$PROG" bitmap --clear top.qcow2 inc; fi
            exec "$PROG" "${CMD[@]}"' ;;
    bitmap-add)
        FIX=bitmaps CMD=(bitmap --add --disabled --merge=a --merge=c -g 16k d.qcow2 n)
        JOB=bitmap AUTH=d.qcow2
        GUEST=(d.qcow2) RO=(other.qcow2) SAME=(d.qcow2)
        BMCHECK=(d.qcow2:n d.qcow2:a d.qcow2:b d.qcow2:c d.qcow2:r) ;;
    bitmap-remove)
        FIX=bitmaps CMD=(bitmap --remove d.qcow2 r)
        JOB=bitmap AUTH=d.qcow2
        GUEST=(d.qcow2) RO=(other.qcow2) SAME=(d.qcow2)
        BMCHECK=(d.qcow2:a d.qcow2:b d.qcow2:c d.qcow2:r) ;;
    bitmap-clear)
        FIX=bitmaps CMD=(bitmap --clear --disable d.qcow2 a)
        JOB=bitmap AUTH=d.qcow2
        GUEST=(d.qcow2) RO=(other.qcow2) SAME=(d.qcow2)
        BMCHECK=(d.qcow2:a d.qcow2:b d.qcow2:c d.qcow2:r) ;;
    bitmap-merge)
        FIX=bitmaps CMD=(bitmap --enable --merge=x -b other.qcow2 -F qcow2 d.qcow2 b)
        JOB=bitmap AUTH=d.qcow2
        GUEST=(d.qcow2) RO=(other.qcow2) SAME=(d.qcow2)
        BMCHECK=(d.qcow2:a d.qcow2:b d.qcow2:c d.qcow2:r) ;;
    check-leaks)
        FIX=leaks CMD=(check -r leaks lk.qcow2) GUEST=(lk.qcow2) CLEAN=(lk.qcow2)
        RC_OK='0 1 2 3' SAME=(lk.qcow2) ;;
    check-all)
        FIX=leaks CMD=(check -r all lk.qcow2) GUEST=(lk.qcow2) CLEAN=(lk.qcow2)
        RC_OK='0 1 2 3' SAME=(lk.qcow2) ;;
    live-*)
        # (tests/crash/live.bash: an agent's operation, driven over QMP)
        FIX=live CMD=(agent "${1#live-}") ;;
    check-all-big)
        # (512-byte clusters, a refcount too high or zero every few dozen
        # clusters: a few hundred calls)
        FIX=errors CMD=(check -r all er.qcow2) GUEST=(er.qcow2) CLEAN=(er.qcow2) BROKEN=(er.qcow2)
        RC_OK='0 1 2 3' SAME=(er.qcow2) ;;
    *)
        echo "crash: unknown operation '$1'" >&2
        return 1 ;;
    esac
}

# ------------------------------------------------------------ fixtures
# Written by qemu-img and qemu-io only; 4 MiB disks.

# qio FMT IMG CMD...: one qemu-io run with one -c per command; fails on
# any error it reports
_qio() {
    local fmt=$1 img=$2 c out
    shift 2
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    out=$(qemu-io -f "$fmt" "${args[@]}" "$img" 2>&1) || { echo "qemu-io $img: $out" >&2; return 1; }
    if grep -qiE 'error|failed|can.t' <<<"$out"; then
        echo "qemu-io $img: $out" >&2
        return 1
    fi
}

# base <- mid <- top; base is qcow2 (64k clusters, compressed and zero
# clusters) or raw; mid has 4k clusters and many small extents, and an
# enabled bitmap; top has 64k clusters, partial-cluster writes over its
# backing, zero and compressed clusters, an enabled and a disabled bitmap
_fx_chain() {
    local k=$1 w=() i
    if [ "$k" = raw ]; then
        qemu-img create -q -f raw base.raw 4M &&
            _qio raw base.raw 'write -P 0x11 0 1M' 'write -P 0x12 1536k 512k' \
                'write -P 0x13 2M 128k' 'write -P 0x14 3M 1M' || return 1
    else
        qemu-img create -q -f qcow2 -o cluster_size=64k base.qcow2 4M &&
            _qio qcow2 base.qcow2 'write -P 0x11 0 1M' 'write -P 0x12 1536k 512k' \
                'write -c -P 0x13 2M 128k' 'write -z 256k 128k' 'write -P 0x14 3M 1M' || return 1
    fi
    qemu-img create -q -f qcow2 -o cluster_size=4k -b "base.$k" -F "$k" mid.qcow2 &&
        qemu-img bitmap --add mid.qcow2 mb || return 1
    for ((i = 0; i < 32; i++)); do
        w+=("write -P $((0x20 + i)) $((i * 128 + 8))k 4k")
    done
    _qio qcow2 mid.qcow2 "${w[@]}" 'write -z 1M 64k' 'write -c -P 0x2f 2560k 8k' || return 1
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 &&
        qemu-img bitmap --add top.qcow2 tb &&
        qemu-img bitmap --add --disable top.qcow2 td &&
        _qio qcow2 top.qcow2 'write -P 0x31 64k 64k' 'write -P 0x32 700k 100k' \
            'write -z 1536k 128k' 'write -c -P 0x33 3200k 64k' 'write -P 0x34 4032k 64k'
}

fx_chain() { _fx_chain qcow2; }
fx_chain-raw() { _fx_chain raw; }

# chain + an existing target for mirror -n, with data of its own and an
# enabled bitmap (that records what mirror writes)
fx_mirror-n() {
    _fx_chain qcow2 || return 1
    qemu-img create -q -f qcow2 tn.qcow2 4M &&
        qemu-img bitmap --add tn.qcow2 nb &&
        _qio qcow2 tn.qcow2 'write -P 0x55 0 512k' 'write -P 0x56 3M 64k'
}

# chain + a full copy (inc.qcow2) taken when the bitmap "inc" was added to
# top, and more writes to top since then (recorded in "inc")
fx_incr() {
    _fx_chain qcow2 || return 1
    qemu-img convert -O qcow2 top.qcow2 inc.qcow2 &&
        qemu-img bitmap --add -g 16k top.qcow2 inc &&
        _qio qcow2 top.qcow2 'write -P 0x61 128k 64k' 'write -P 0x62 2M 4k' \
            'write -z 3M 64k' 'write -P 0x63 1100k 20k'
}

# snapshot's disks: a raw chain's top and base, and a lone qcow2 with a bitmap
fx_disks() {
    _fx_chain raw || return 1
    qemu-img create -q -f qcow2 d3.qcow2 4M &&
        qemu-img bitmap --add d3.qcow2 db &&
        _qio qcow2 d3.qcow2 'write -P 0x71 0 256k' 'write -P 0x72 2M 64k'
}

# d.qcow2: bitmaps a (enabled), b (disabled after some writes), c (16k
# granularity), r; other.qcow2: bitmap x (for --merge -b)
fx_bitmaps() {
    qemu-img create -q -f qcow2 d.qcow2 4M &&
        qemu-img bitmap --add d.qcow2 a &&
        qemu-img bitmap --add d.qcow2 b &&
        qemu-img bitmap --add -g 16k d.qcow2 c &&
        qemu-img bitmap --add d.qcow2 r &&
        _qio qcow2 d.qcow2 'write -P 0x81 0 100k' 'write -P 0x82 1M 64k' 'write -z 2M 64k' &&
        qemu-img bitmap --disable d.qcow2 b &&
        _qio qcow2 d.qcow2 'write -P 0x83 3M 20k' 'write -P 0x84 1500k 4k' &&
        qemu-img create -q -f qcow2 other.qcow2 4M &&
        qemu-img bitmap --add other.qcow2 x &&
        _qio qcow2 other.qcow2 'write -P 0x91 512k 128k' 'write -P 0x92 3584k 4k'
}

# lk.qcow2: leaks only (qemu-img check exits 3): a freed cluster with
# refcount 1, and three clusters past the end of the file with refcount 1
fx_leaks() {
    local h n
    qemu-img create -q -f qcow2 lk.qcow2 4M &&
        _qio qcow2 lk.qcow2 'write -P 0xa1 0 768k' 'write -P 0xa2 2M 256k' || return 1
    h=$(python3 -S "$CRASH_TESTS_DIR/data/qcow2edit.py" lk.qcow2 host 131072) || return 1
    _qio qcow2 lk.qcow2 'discard 128k 64k' || return 1
    n=$(($(stat -c %s lk.qcow2) / 65536))
    truncate -s $(((n + 3) * 65536)) lk.qcow2 &&
        python3 -S "$CRASH_TESTS_DIR/data/qcow2edit.py" lk.qcow2 rc $((h / 65536)) 1 \
            + rc "$n" 1 + rc $((n + 1)) 1 + rc $((n + 2)) 1 >/dev/null || return 1
    local rc=0
    qemu-img check lk.qcow2 >/dev/null 2>&1 || rc=$?
    [ "$rc" -eq 3 ] || { echo "fx_leaks: qemu-img check exited $rc, expected 3" >&2; return 1; }
}

# er.qcow2: 512-byte clusters, 1 MiB of data; every 37th cluster's
# refcount one too high (a leak), every 101st zero (an error: qemu-img
# check exits 2)
fx_errors() {
    local n i args=()
    qemu-img create -q -f qcow2 -o cluster_size=512 er.qcow2 4M &&
        _qio qcow2 er.qcow2 'write -P 0xb1 0 768k' 'write -P 0xb2 3M 256k' || return 1
    n=$(($(stat -c %s er.qcow2) / 512))
    for ((i = 40; i < n; i += 37)); do args+=(+ rc "$i" +1); done
    for ((i = 45; i < n; i += 101)); do args+=(+ rc "$i" 0); done
    python3 -S "$CRASH_TESTS_DIR/data/qcow2edit.py" er.qcow2 size "${args[@]}" >/dev/null || return 1
    local rc=0
    qemu-img check er.qcow2 >/dev/null 2>&1 || rc=$?
    [ "$rc" -eq 2 ] || { echo "fx_errors: qemu-img check exited $rc, expected 2" >&2; return 1; }
}

# crash_fixture NAME: build it once in $CRASH_ROOT/fix/NAME
crash_fixture() {
    local d=$CRASH_ROOT/fix/$1
    [ -e "$d/.ok" ] && return 0
    rm -rf "$d"
    mkdir -p "$d" || return 1
    (cd "$d" && "fx_$1") || { echo "crash: fixture $1 failed" >&2; return 1; }
    touch "$d/.ok"
}

# ------------------------------------------------------------ helpers
# A point runs a few hundred times per operation and process creation is
# what costs: the helpers below use bash alone wherever they can, and
# return their results in variables.

shopt -s extglob

# _is_qcow2 NAME: by name (a torn header must not make it look raw)
_is_qcow2() {
    case $1 in *.qcow2 | *.qcow2.part) return 0 ;; esac
    return 1
}

_in() { # WORD LIST...: WORD is one of LIST
    local x=$1 y
    shift
    for y in "$@"; do [ "$x" = "$y" ] && return 0; done
    return 1
}

# _ls [all] (in cwd): LS=(the names of the files, hidden ones too with
# "all"), in the order of ls -A (LC_ALL=C)
_ls() {
    local ng
    ng=$(shopt -p nullglob)
    shopt -s nullglob
    LS=(*)
    [ "${1:-}" = all ] && LS=(.[!.]* "${LS[@]}")
    eval "$ng"
}

# _slurp VAR FILE: VAR = the contents of FILE, without the last newline
_slurp() {
    local -n _slurp_v=$1
    _slurp_v=''
    IFS= read -r -d '' _slurp_v <"$2" || true
    _slurp_v=${_slurp_v%$'\n'}
}

# _sums (in cwd): SUMS = "CRC SIZE NAME" of every file, hidden ones too
_sums() {
    _ls all
    SUMS=''
    [ ${#LS[@]} -eq 0 ] || SUMS=$(cksum -- "${LS[@]}")
}

# _load_sums VAR TEXT: the associative array VAR maps each name of a
# _sums TEXT to "CRC SIZE"
_load_sums() {
    local -n _load_sums_m=$1
    local c z f
    _load_sums_m=()
    while read -r c z f; do
        [ -n "$f" ] && _load_sums_m[$f]="$c $z"
    done <<<"$2"
}

# _same_bytes F REF: F has the same checksum now (cur_sum) as in the
# reference state REF (before_sum or after_sum); the images of the
# reference states were checked when they were made, so the same bytes
# need no qemu-img
_same_bytes() {
    local -n _same_bytes_r=$2
    [ -n "${cur_sum[$1]:-}" ] && [ "${cur_sum[$1]}" = "${_same_bytes_r[$1]:-}" ]
}

# _hash TEXT: HASH = a 60-bit hash of TEXT, in hex
_hash() {
    local t=$1 i h=1469598103934665603 c
    for ((i = 0; i < ${#t}; i++)); do
        printf -v c '%d' "'${t:i:1}"
        h=$(((h ^ c) * 1099511628211 & 0xfffffffffffffff))
    done
    printf -v HASH '%x' "$h"
}

# _fp IMG (in cwd): FP = the metadata of IMG as one text: "absent", a raw
# file's size, or qemu-img info without the volatile lines (with the in-use
# flag dropped when INUSE_OK), and the dirty ranges of its BMCHECK bitmaps
# as qemu-nbd -B exports them
_fp() {
    local img=$1 line p b m want=()
    if [ ! -e "$img" ]; then
        FP=absent
        return 0
    fi
    if ! _is_qcow2 "$img"; then
        FP="raw $(stat -c %s "$img")"
        return 0
    fi
    FP=''
    while IFS= read -r line; do
        case $line in 'image: '* | 'disk size: '*) continue ;; esac
        line=${line% (actual path: *)}
        if [ "$INUSE_OK" = 1 ]; then
            [[ $line == *in-use ]] && continue
            line=${line//\[+([0-9])\]:/[]:}
        fi
        FP+=$line$'\n'
    done < <(qemu-img info -U -f qcow2 "$img" 2>&1)
    for p in "${BMCHECK[@]}"; do
        [ "${p%%:*}" = "$img" ] || continue
        b=${p#*:}
        if [[ $'\n'$FP == *$'\n'+( )"name: $b"$'\n'* ]]; then
            want+=("$b")
        else
            FP+="bitmap $b: none"$'\n'
        fi
    done
    if [ ${#want[@]} -gt 0 ]; then
        if [ -n "$CRASH_NBDPY" ]; then
            FP+=$("$CRASH_NBDPY" "$CRASH_LIB_DIR/bitmaps.py" "$img" "${want[@]}" 2>/dev/null 3>&-)
        else
            for b in "${want[@]}"; do
                if m=$(nbdinfo --map="qemu:dirty-bitmap:$b" -- [ qemu-nbd -r -f qcow2 -B "$b" "$img" ] 2>/dev/null 3>&-); then
                    FP+="bitmap $b: $(awk '$3 == 1 { printf "%s+%s ", $1, $2 }' <<<"$m")"$'\n'
                else
                    FP+="bitmap $b: unreadable"$'\n'
                fi
            done
        fi
    fi
    FP=${FP%$'\n'}
}

# _view IMG OUT (in cwd): IMG's contents through its chain as a raw file
# OUT, or OUT.absent
_view() {
    rm -f "$2" "$2.absent"
    if [ ! -e "$1" ]; then
        touch "$2.absent"
    elif _is_qcow2 "$1"; then
        qemu-img convert -U -f qcow2 -O raw "$1" "$2"
    else
        cp "$1" "$2"
    fi
}

# _layer_json IMG: LAYER = IMG alone, without its backing file
_layer_json() {
    printf -v LAYER 'json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"%s"}}' "$1"
}

# _same_view IMG REF (in cwd): IMG reads as REF (a raw file, or REF.absent)
_same_view() {
    if [ -e "$2.absent" ]; then
        [ ! -e "$1" ]
        return
    fi
    [ -e "$1" ] || return 1
    if _is_qcow2 "$1"; then
        qemu-img compare -q -f qcow2 -F raw "$1" "$2" >/dev/null 2>&1
    else
        cmp -s "$1" "$2"
    fi
}

# _same_layer IMG REF (in cwd): IMG alone (without its backing file)
# reads as REF (a raw file)
_same_layer() {
    if _is_qcow2 "$1"; then
        _layer_json "$1"
        qemu-img compare -q -F raw "$LAYER" "$2" >/dev/null 2>&1
    else
        cmp -s "$1" "$2"
    fi
}

# _corruptions IMG (in cwd): how many corruptions qemu-img check counts
_corruptions() {
    qemu-img check -f qcow2 --output=json "$1" 2>/dev/null | jq '.corruptions // 0'
}

# _check IMG (in cwd): qemu-img check's exit status
_check() {
    local rc=0
    qemu-img check -q -f qcow2 "$1" >/dev/null 2>&1 || rc=$?
    return "$rc"
}

# _check_ok IMG (in cwd): qemu-img check exits 0, or 3 (leaks) unless IMG
# is in CLEAN; CHECK_RC = the status
_check_ok() {
    CHECK_RC=0
    _check "$1" || CHECK_RC=$?
    [ "$CHECK_RC" -eq 0 ] || { [ "$CHECK_RC" -eq 3 ] && ! _in "$1" "${CLEAN[@]}"; }
}

# ------------------------------------------------------------ references

# crash_prepare OP: the before and after states of OP, in $CRASH_ROOT/ref/OP:
# before/ after/ (the images), counts (calls of the fault-free run),
# v/B.IMG v/A.IMG (views of GUEST images), fp/B.IMG fp/A.IMG (metadata),
# l/A.IMG (each image alone, after), before.sums after.sums (checksums),
# before.files after.files (names)
crash_prepare() {
    local op=$1 r f rc=0 a b all
    if _is_live "$op"; then
        live_prepare "$op"
        return
    fi
    op_def "$op" || return 1
    r=$CRASH_ROOT/ref/$op
    [ -e "$r/.ok" ] && return 0
    crash_fixture "$FIX" || return 1
    rm -rf "$r"
    mkdir -p "$r/v" "$r/fp" "$r/l" || return 1
    cp -a "$CRASH_ROOT/fix/$FIX" "$r/before" && rm -f "$r/before/.ok" &&
        cp -a "$r/before" "$r/after" || return 1
    (cd "$r/after" && BLOCKCTL_FAULT='' BLOCKCTL_FAULT_COUNT="$r/counts" \
        BLOCKCTL_STATE_DIR="$r/state" \
        exec timeout "$CRASH_TIMEOUT" "$PROG" "${CMD[@]}") >"$r/run.out" 2>"$r/run.err" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "crash: $op: the fault-free run 'blockctl ${CMD[*]}' exited $rc: $(cat "$r/run.err")" >&2
        return 1
    fi
    if compgen -G "$r/state/jobs/*" >/dev/null; then
        echo "crash: $op: the fault-free run left a journal: $(ls "$r/state/jobs")" >&2
        return 1
    fi
    for f in "${BROKEN[@]}"; do
        (cd "$r/before" && _corruptions "$f") >"$r/corr.$f" || return 1
    done
    (
        cd "$r/before" && _ls all && echo "${LS[*]}" >"$r/before.files" &&
            _sums && echo "$SUMS" >"$r/before.sums" &&
            cd "$r/after" && _ls all && echo "${LS[*]}" >"$r/after.files" &&
            _sums && echo "$SUMS" >"$r/after.sums" || exit 1
        for f in "${LS[@]}"; do
            _is_qcow2 "$f" || continue
            if ! _check_ok "$f"; then
                echo "crash: $op: after the fault-free run, qemu-img check $f exits $CHECK_RC" >&2
                exit 1
            fi
        done
    ) || return 1
    for f in "${GUEST[@]}"; do
        (cd "$r/before" && _view "$f" "$r/v/B.$f") && (cd "$r/after" && _view "$f" "$r/v/A.$f") ||
            return 1
        # (one comparison is enough when the operation does not change it)
        [ -e "$r/v/B.$f" ] && cmp -s "$r/v/B.$f" "$r/v/A.$f" && touch "$r/v/same.$f"
    done
    # the oracle for the fault-free run: what must read the same does
    for f in "${SAME[@]}"; do
        cmp -s "$r/v/B.$f" "$r/v/A.$f" ||
            { echo "crash: $op: the fault-free run changed what $f reads" >&2; return 1; }
    done
    for f in "${EQ[@]}"; do
        a=${f%%=*} b=${f#*=}
        (cd "$r/before" && _view "$b" "$r/v/src.$b") &&
            cmp -s "$r/v/A.$a" "$r/v/src.$b" ||
            { echo "crash: $op: after the fault-free run $a does not read as $b did" >&2; return 1; }
    done
    _slurp all "$r/after.files"
    for f in $(printf '%s\n' "${GUEST[@]}" "${TRACK[@]}" $all | sort -u); do
        (cd "$r/before" && _fp "$f" && printf '%s' "$FP" >"$r/fp/B.$f") &&
            (cd "$r/after" && _fp "$f" && printf '%s' "$FP" >"$r/fp/A.$f") || return 1
        # an image the operation leaves as it was is both as before and as after
        if cmp -s "$r/fp/B.$f" "$r/fp/A.$f" &&
            { ! _in "$f" "${GUEST[@]}" || [ -e "$r/v/same.$f" ] ||
                { [ -e "$r/v/B.$f.absent" ] && [ -e "$r/v/A.$f.absent" ]; }; }; then
            touch "$r/fp/both.$f"
        fi
    done
    for f in $all; do
        _in "$f" "${RO[@]}" "${FREE[@]}" && continue
        if _is_qcow2 "$f"; then
            (cd "$r/after" && _layer_json "$f" && qemu-img convert -O raw "$LAYER" "$r/l/A.$f") ||
                return 1
        else
            cp "$r/after/$f" "$r/l/A.$f" || return 1
        fi
    done
    touch "$r/.ok"
}

# crash_count OP KIND: how many KIND calls the fault-free run made
crash_count() {
    awk -v k="$2" '$1 == k { n += $2 } END { print n + 0 }' "$CRASH_ROOT/ref/$1/counts"
}

# ------------------------------------------------------------ one point

# _is_fp F STATE (in cwd): F's metadata are those of STATE (B or A)
_is_fp() {
    local ref x
    _slurp ref "$r/fp/$2.$1"
    if [ ! -e "$1" ]; then
        x=absent
    elif [ "$2" = B ] && _same_bytes "$1" before_sum; then
        return 0
    elif [ "$2" = A ] && _same_bytes "$1" after_sum; then
        return 0
    else
        [ -n "${fp_cache[$1]+set}" ] || { _fp "$1"; fp_cache[$1]=$FP; }
        x=${fp_cache[$1]}
    fi
    [ "$x" = "$ref" ]
}

# _final (in the point's folder): it holds exactly the after state (see
# the top of this file); FINAL says what differs
_final() {
    local f want
    local -A fp_cache=()
    FINAL=''
    _ls all
    _slurp want "$r/after.files"
    if [ "${LS[*]}" != "$want" ]; then
        FINAL="files: ${LS[*]} instead of $want"
        return 1
    fi
    _sums
    _load_sums cur_sum "$SUMS"
    for f in "${LS[@]}"; do
        _same_bytes "$f" after_sum && continue
        if _in "$f" "${RO[@]}"; then
            FINAL="$f changed (it is only read)"
            return 1
        fi
        if ! _is_fp "$f" A; then
            FINAL="$f: metadata differ from the fault-free run's: $(diff <(printf '%s\n' "${fp_cache[$f]}") "$r/fp/A.$f" | head -n 8)"
            return 1
        fi
        if ! _in "$f" "${FREE[@]}" && ! _same_layer "$f" "$r/l/A.$f"; then
            FINAL="$f: its own contents differ from the fault-free run's"
            return 1
        fi
        if _is_qcow2 "$f" && ! _check_ok "$f"; then
            FINAL="qemu-img check $f exits $CHECK_RC"
            return 1
        fi
    done
}

# _known OP SWEEP N: the point is listed in known-failures
_known() {
    [ -f "$CRASH_KNOWN" ] || return 1
    local o s n rest
    while read -r o s n rest; do
        case $o in '' | '#'*) continue ;; esac
        case $n in '#'*) n='*' ;; esac
        # shellcheck disable=SC2053
        [[ $1 == $o && $2 == $s && $3 == ${n:-*} ]] && return 0
    done <"$CRASH_KNOWN"
    return 1
}

# _jfiles: JF = the journals in the point's state folder
_jfiles() {
    local ng
    ng=$(shopt -p nullglob)
    shopt -s nullglob
    JF=("$w.state/jobs/"*.json)
    eval "$ng"
}

# _recover (in the point's folder): the documented recovery (PRE and the
# command again, or RECOVER) ends in the after state; sets rerun, vdet
_recover() {
    local rc2=0 err
    if [ -n "$RECOVER" ]; then
        (eval "$RECOVER") >"$w.rerun.out" 2>"$w.rerun.err" || rc2=$?
    else
        (eval "$PRE" && exec timeout "$CRASH_TIMEOUT" "$PROG" "${CMD[@]}") \
            >"$w.rerun.out" 2>"$w.rerun.err" || rc2=$?
    fi
    if [ "$rc2" -ne 0 ]; then
        IFS= read -r -N 300 err <"$w.rerun.err" || true
        rerun=1 vdet+="the rerun exited $rc2: $err; "
    elif ! _final; then
        rerun=1 vdet+="after the rerun: $FINAL; "
    fi
}

# _job_end (in the point's folder, within _verify; one journal left by a
# command that did not end): `job list --output=json` names the job (its
# type, not running) and AUTH as the authoritative image, which reads as
# the model says (as before or as after: _verify saw the views); then, as
# JACT says:
#   resume  `job resume ID` exits 0 and leaves exactly the after state and
#           no journal; its copy starts at the journal's "copied" and
#           copies at most total - copied bytes (counted by the command:
#           "copied N bytes from offset M"); a copy started anew after the
#           journal said some was copied is a failure
#   abort   `job abort ID` exits 0 and leaves no journal; each GUEST image
#           reads as before (or, once the copy was complete, as after);
#           then the documented recovery ends in the after state
# JINFO = ACTION:STATE:BYTES:REMAINING (BYTES "-" when nothing was resumed)
_job_end() {
    local out n id typ auth running state copied total rc2=0 err bytes='-' from f ok
    JINFO=$JACT:?:-:-
    out=$(BLOCKCTL_STATE_DIR=$w.state "$PROG" job list --output=json 2>&1) ||
        { view=1 vdet+="job list failed: $out; "; return; }
    IFS=$'\t' read -r n id typ auth running state copied total < <(jq -r \
        '[length, .[0].id, .[0].type, .[0].authoritative, .[0].running, .[0].state,
          (.[0].copied // 0), (.[0].total // 0)] | @tsv' <<<"$out" 2>/dev/null) || true
    if [ "$n" != 1 ] || [ "$typ" != "$JOB" ] || [ "$running" != false ]; then
        view=1 vdet+="job list: $n jobs, type $typ, running $running (want 1 $JOB job, not running); "
        return
    fi
    local want='' a
    for a in $AUTH; do want+=${want:+, }$PWD/$a; done
    if [ "$auth" != "$want" ]; then
        view=1 vdet+="job list names '$auth' authoritative, not '$want'; "
    else
        for a in $AUTH; do
            # (an image the operation only reads is unchanged: _verify saw it)
            _in "$a" "${RO[@]}" && continue
            _same_view "$a" "$r/v/B.$a" || _same_view "$a" "$r/v/A.$a" ||
                { view=1 vdet+="the authoritative $a reads neither as before nor as after; "; }
        done
    fi
    if [ "$total" = 0 ] && [ "$JOB" != snapshot ] && [ "$JOB" != bitmap ]; then
        # (killed before the copy began: all of it is left)
        total=$(qemu-img info -U --output=json "$AUTH" | jq '."virtual-size"') || total=0
    fi
    JINFO=$JACT:$state:-:$((total - copied))
    if [ "$JACT" = resume ]; then
        BLOCKCTL_STATE_DIR=$w.state timeout "$CRASH_TIMEOUT" "$PROG" job resume "$id" \
            >"$w.rerun.out" 2>"$w.rerun.err" || rc2=$?
        err=''
        IFS= read -r -N 2000 err <"$w.rerun.err" || true
        if [ "$rc2" -ne 0 ]; then
            rerun=1 vdet+="job resume ($state, $copied of $total copied) exited $rc2: ${err:0:300}; "
            return
        fi
        if [[ $err =~ copied\ ([0-9]+)\ bytes\ from\ offset\ ([0-9]+) ]]; then
            bytes=${BASH_REMATCH[1]} from=${BASH_REMATCH[2]}
            [ "$from" = "$copied" ] ||
                rerun=1 vdet+="job resume started at $from, the journal said $copied; "
            [ "$bytes" -le $((total - copied)) ] ||
                rerun=1 vdet+="job resume copied $bytes bytes, more than the $((total - copied)) left; "
        elif [ "$state" = copying ] && [ "$copied" -gt 0 ]; then
            rerun=1 vdet+="job resume copied anew (the journal said $copied of $total copied): ${err:0:300}; "
        fi
        JINFO=resume:$state:$bytes:$((total - copied))
        _jfiles
        [ ${#JF[@]} -eq 0 ] || rerun=1 vdet+="a journal is left after job resume; "
        _final || rerun=1 vdet+="after job resume ($state): $FINAL; "
        return
    fi
    BLOCKCTL_STATE_DIR=$w.state "$PROG" job abort "$id" >"$w.rerun.out" 2>"$w.rerun.err" || rc2=$?
    if [ "$rc2" -ne 0 ]; then
        IFS= read -r -N 300 err <"$w.rerun.err" || true
        rerun=1 vdet+="job abort ($state) exited $rc2: $err; "
        return
    fi
    _jfiles
    [ ${#JF[@]} -eq 0 ] || rerun=1 vdet+="a journal is left after job abort; "
    for f in "${GUEST[@]}"; do
        ok=0
        _same_view "$f" "$r/v/B.$f" && ok=1
        if [ "$ok" = 0 ] && [ "$state" != copying ] && [ "$state" != creating ]; then
            _same_view "$f" "$r/v/A.$f" && ok=1
        fi
        [ "$ok" = 1 ] || rerun=1 vdet+="after job abort ($state) $f does not read as before; "
    done
    _final || _recover
}

# _verify (in the point's folder, within crash_point): the checks of the
# state the run left (SUMS, cur_sum); sets dmg, view, rerun and vdet
_verify() {
    local f s x not_after=0 rc2 whole='' ref err
    local -A fp_cache=() seen=()
    vdet=''
    # the whole folder as before or as after: nothing to look at
    _slurp ref "$r/before.sums"
    [ "$SUMS" = "$ref" ] && whole=B
    _slurp ref "$r/after.sums"
    [ "$SUMS" = "$ref" ] && whole+=A
    # what it only reads is unchanged
    for f in "${RO[@]}"; do
        _same_bytes "$f" before_sum || { view=1 vdet+="$f changed (it is only read); "; }
    done
    # every qcow2 image passes qemu-img check with 0 or 3
    _ls
    for f in "${LS[@]}"; do
        _is_qcow2 "$f" || continue
        _same_bytes "$f" before_sum && continue
        _same_bytes "$f" after_sum && continue
        x=0
        _check "$f" || x=$?
        if [ "$x" -ne 0 ] && [ "$x" -ne 3 ]; then
            # (a TARGET.part is written without ordering syncs between the
            # checkpoints of its journal: after a power failure it may need
            # the repair job resume makes; nobody uses it before)
            if [ -n "$sub" ] && [[ $f == *.part ]] && [ -n "$JOB" ] && compgen -G "$w.state/jobs/*.json" >/dev/null; then
                vdet+="(qemu-img check $f exits $x: a power failure under unordered writes; job resume repairs it) "
            elif [ "$x" -eq 2 ] && _in "$f" "${BROKEN[@]}" &&
                [ "$(_corruptions "$f")" -le "$(cat "$r/corr.$f")" ]; then
                :   # (not repaired yet, and no worse)
            else
                dmg=1 vdet+="qemu-img check $f exits $x; "
            fi
        fi
    done
    # a command that failed leaves everything as before (FAIL_BEFORE) unless
    # it left its journal, which job resume or abort then ends (_job_end)
    local strict=0
    _jfiles
    if [ "$FAIL_BEFORE" = 1 ] && [ "$rc" -ne 0 ] && [ "$rc" -ne 137 ] &&
        { [ ${#JF[@]} -ne 1 ] || [ -z "$JOB" ]; }; then
        strict=1
    fi
    # each image a user sees is as before or as after
    for f in "${GUEST[@]}" "${TRACK[@]}"; do
        [ -n "${seen[$f]:-}" ] && continue
        seen[$f]=1
        s=$whole
        if [ -n "$s" ]; then
            [ -e "$r/fp/both.$f" ] && s=BA
        else
            if ! _in "$f" "${GUEST[@]}"; then
                s=BA
            elif [ -e "$r/v/same.$f" ]; then
                _same_view "$f" "$r/v/B.$f" && s=BA
            else
                _same_view "$f" "$r/v/B.$f" && s+=B
                _same_view "$f" "$r/v/A.$f" && s+=A
            fi
            [[ $s == *B* ]] && ! _is_fp "$f" B && s=${s/B/}
            [[ $s == *A* ]] && ! _is_fp "$f" A && s=${s/A/}
        fi
        [[ $s == *A* ]] || not_after=1
        if [ -z "$s" ]; then
            view=1 vdet+="$f is neither as before nor as after; "
        elif [ "$strict" = 1 ] && [[ $s != *B* ]]; then
            view=1 vdet+="$f is not as before after a failure (exit $rc); "
        fi
    done
    if [ "$strict" = 1 ]; then
        _ls all
        _slurp ref "$r/before.files"
        [ "${LS[*]}" = "$ref" ] || { view=1 vdet+="files left after a failure: ${LS[*]}; "; }
    fi
    # a journal: only where the command keeps one, and only when it did not
    # end; then job list, and job resume or abort (_job_end)
    _jfiles
    if [ ${#JF[@]} -gt 0 ]; then
        if [ -z "$JOB" ]; then
            view=1 vdet+="a journal left by a command that keeps none: ${JF[*]##*/}; "
        elif [ "$rc" -eq 0 ]; then
            view=1 vdet+="exit 0 left a journal: ${JF[*]##*/}; "
        elif [ ${#JF[@]} -gt 1 ]; then
            view=1 vdet+="${#JF[@]} journals left: ${JF[*]##*/}; "
        else
            _job_end
            return
        fi
    fi
    # the end: exit 0 must be the after state; otherwise the recovery
    if [ "$rc" -eq 0 ]; then
        _final || { view=1 vdet+="exit 0 but not the after state: $FINAL; "; }
    elif [ "$not_after" = 1 ] || ! _final; then
        _recover
    fi
}

# crash_point OP SWEEP N: run one point in $CRASH_ROOT/pts/OP/SWEEP-N;
# prints one line: OP SWEEP N FIRED BADEXIT DAMAGED VIEW RERUN XFAIL DETAIL
# JOB POWER (tab-separated; the flags 0 or 1; DETAIL says what failed; JOB
# what was done with the journal left, ACTION:STEP:BYTES:REMAINING (see
# _job_end), "-" when none was; POWER what iolog-replay.py changed).  The folder
# is removed when the point passed or is a known failure (unless
# CRASH_KEEP=1).  It changes
# directory: run it in a subshell ($(...), or in the background).
crash_point() {
    if _is_live "$1"; then
        live_point "$@"
        return
    fi
    local op=$1 sweep=$2 n=$3
    local kind=${sweep%%:*} act=${sweep#*:}
    local r=$CRASH_ROOT/ref/$1 w rc=0 fired=0 bad=0 dmg=0 view=0 rerun=0 xf=0 det='' vdet
    local k v err key cache=$CRASH_ROOT/cache/$1 rcc=err fault=$kind:$n:$act
    local JACT JINFO=- plinfo=- jkey='' jtxt sub='' i=0
    local -A cur_sum before_sum after_sum
    op_def "$op" || return 1
    w=$CRASH_ROOT/pts/$op/$kind-$act-$n
    [ -e "$w" ] && rm -rf "$w" "$w".*
    cp -a "$r/before" "$w" 2>/dev/null || { mkdir -p "${w%/*}" && cp -a "$r/before" "$w"; } &&
        cd "$w" || return 1
    # power loss (ACTION pl-SUBSET): killed before the call, with a log of
    # its writes; then the files are made a state that a power failure
    # there could leave (tests/tools/iolog-replay.py: what was flushed, and
    # SUBSET of the rest: none, all, or rN, a random one seeded with N)
    case $act in
    pl-none) sub=none ;;
    pl-all) sub=all i=1 ;;
    pl-r*) sub=random:$op:$kind:$n:${act#pl-r} i=${act#pl-r} ;;
    esac
    if [ -n "$sub" ]; then
        fault=$kind:$n:kill
        _ls
        stat -c "%i $w/%n" -- "${LS[@]}" >"$w.inodes" || return 1
    fi
    # after a kill or an error that leaves a journal: job resume at odd
    # points, job abort at even ones (CRASH_JACT: always that one)
    JACT=${CRASH_JACT:-}
    [ -n "$JACT" ] || { [ $(((n + i) % 2)) = 1 ] && JACT=resume || JACT=abort; }
    # (the braces keep bash from reporting the kill on stderr)
    { (if [ -n "$sub" ]; then export BLOCKCTL_IOLOG="$w.log"; fi
        BLOCKCTL_FAULT=$fault BLOCKCTL_FAULT_COUNT="$w.cnt" BLOCKCTL_STATE_DIR="$w.state" \
        exec timeout "$CRASH_TIMEOUT" "$PROG" "${CMD[@]}") >"$w.out" 2>"$w.err"; } 2>/dev/null || rc=$?
    if [ -n "$sub" ] && [ "$rc" -eq 137 ]; then
        plinfo=$(/usr/bin/python3 "$CRASH_TESTS_DIR/tools/iolog-replay.py" "$w.log" "$w.inodes" \
            "$r/before" "$sub" 2>&1) || { bad=1 det+="iolog-replay failed: $plinfo; "; }
        plinfo=${plinfo//[$'\n\t']/ }
    fi
    if [ "$rc" -eq 137 ]; then
        fired=1
    elif [ -s "$w.cnt" ]; then
        while read -r k v; do
            [ "$k" = fired ] && [ "$v" -gt 0 ] && fired=1
        done <"$w.cnt"
    fi
    if [ "$fired" != 1 ] && [ "$rc" -eq 0 ]; then
        # the run made fewer such calls than the counting run: not a point
        cd / && rm -rf "$w" "$w".*
        printf '%s\t%s\t%s\t0\t0\t0\t0\t0\t0\tnot reached\n' "$op" "$sweep" "$n"
        return 0
    fi
    # the exit status
    case $act in
    kill | torn | pl-*) [ "$rc" -eq 137 ] || { bad=1 det+="exit $rc, expected 137; "; } ;;
    *)
        if ! _in "$rc" $RC_OK; then
            err=''
            IFS= read -r -N 300 err <"$w.err" || true
            bad=1 det+="exit $rc ($err); "
        elif [ "$rc" -ne 0 ] && [ ! -s "$w.err" ]; then
            bad=1 det+="exit $rc without a message; "
        fi ;;
    esac
    # The verdict on the state depends only on the files and on how the
    # run ended: points that leave the same bytes share it (many faults
    # stop a run before it wrote anything, or at the same place).
    [ "$rc" -eq 0 ] && rcc=ok
    [ "$rc" -eq 137 ] && rcc=killed
    # (and on the journal left: its step and how much it says is copied,
    # and what is done with it)
    _jfiles
    for v in "${JF[@]}"; do
        _slurp jtxt "$v"
        jtxt=${jtxt//[$' \n']/}
        [[ $jtxt =~ \"state\":\"([a-z-]*)\" ]] && jkey+=${BASH_REMATCH[1]}
        [[ $jtxt =~ \"copied\":([0-9]*) ]] && jkey+=.${BASH_REMATCH[1]}
        jkey+=-$JACT
    done
    _sums
    _hash "$SUMS"
    key=$rcc-$HASH${jkey:+-j$jkey}
    if [ "${CRASH_NOCACHE:-0}" != 1 ] && [ -f "$cache/$key" ]; then
        IFS=$'\t' read -r dmg view rerun JINFO v <"$cache/$key"
        det+=$v
    else
        _load_sums cur_sum "$SUMS"
        _slurp v "$r/before.sums"
        _load_sums before_sum "$v"
        _slurp v "$r/after.sums"
        _load_sums after_sum "$v"
        _verify
        vdet=${vdet//[$'\n\t']/ }
        if [ "${CRASH_NOCACHE:-0}" != 1 ]; then
            [ -d "$cache" ] || mkdir -p "$cache"
            printf '%s\t%s\t%s\t%s\t%s\n' "$dmg" "$view" "$rerun" "$JINFO" "$vdet" >"$cache/$key.$BASHPID" &&
                mv -f "$cache/$key.$BASHPID" "$cache/$key"
        fi
        det+=$vdet
    fi
    if [ $((bad + dmg + view + rerun)) -gt 0 ] && _known "$op" "$sweep" "$n"; then
        xf=1
    fi
    cd /
    if { [ $((bad + dmg + view + rerun)) -eq 0 ] || [ "$xf" = 1 ]; } && [ "${CRASH_KEEP:-0}" != 1 ]; then
        rm -rf "$w" "$w".*
    fi
    det=${det//[$'\n\t']/ }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$op" "$sweep" "$n" "$fired" \
        "$bad" "$dmg" "$view" "$rerun" "$xf" "$det" "$JINFO" "$plinfo"
}

# ------------------------------------------------------------ sweeps

# crash_points OP K: the points of OP's sweeps, "SWEEP N" a line: all of
# them for K=1, else the first, every Kth and the last of each sweep
crash_points() {
    local op=$1 k=$2 s c n
    if _is_live "$op"; then
        live_points "$op" "$k"
        return
    fi
    for s in "${CRASH_SWEEPS[@]}"; do
        c=$(crash_count "$op" "${s%%:*}")
        for ((n = 1; n <= c; n++)); do
            if [ "$k" -le 1 ] || [ $(((n - 1) % k)) -eq 0 ] || [ "$n" -eq "$c" ]; then
                echo "$s $n"
            fi
        done
    done
}

# crash_run OP K: every point of crash_points OP K, JOBS at a time; the
# result lines go to $CRASH_ROOT/res/OP
crash_run() {
    local op=$1 k=$2 jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)} s n i=0 running=0 out
    crash_prepare "$op" || return 1
    out=$CRASH_ROOT/res/$op
    rm -rf "$out.d"
    mkdir -p "$out.d" || return 1
    while read -r s n; do
        if [ "$running" -ge "$jobs" ]; then
            wait -n
            running=$((running - 1))
        fi
        crash_point "$op" "$s" "$n" >"$out.d/$i" &
        running=$((running + 1))
        i=$((i + 1))
    done < <(crash_points "$op" "$k")
    wait
    cat "$out.d"/* 2>/dev/null | sort -t$'\t' -k2,2 -k3,3n >"$out"
    rm -rf "$out.d"
}

# crash_failures OP [known]: the failed points of the last crash_run OP
# that are not known failures (with "known": those that are), with a
# reproducer each
crash_failures() {
    local want=0
    [ "${2:-}" = known ] && want=1
    awk -F'\t' -v k="$want" '$5 + $6 + $7 + $8 > 0 && $9 == k' "$CRASH_ROOT/res/$1" |
        while IFS=$'\t' read -r o s n _ _ _ _ _ _ d _; do
            crash_repro "$o" "$s" "$n" "$d"
        done
}

# crash_repro OP SWEEP N [DETAIL]: how to see this point again
crash_repro() {
    op_def "$1" || return 1
    printf '%s %s:%s:%s: %s\n' "$1" "${2%%:*}" "$3" "${2#*:}" "${4:-}"
    printf '    BLOCKCTL_FAULT=%s:%s:%s blockctl %s   # on fixture %s\n' "${2%%:*}" "$3" "${2#*:}" \
        "${CMD[*]}" "$FIX"
    printf '    tests/crash/matrix.sh --point %s %s %s   (--repro: a stand-alone script)\n' \
        "$1" "$2" "$3"
}

# crash_table OP...: one line per operation: points swept, faults that
# fired, then how many points failed each check, and how many of the
# failed points are known failures (tests/crash/known-failures)
crash_table() {
    local op prog='
        { pts++; fired += $4; b += $5; d += $6; v += $7; r += $8; x += $9 }
        END { printf "%-17s %7d %8d %9d %8d %11d %13d %6d\n", name, pts, fired, b, d, v, r, x }'
    printf '%-17s %7s %8s %9s %8s %11s %13s %6s\n' operation points injected "bad exit" damaged \
        "wrong view" "failed rerun" known
    for op in "$@"; do
        [ -f "$CRASH_ROOT/res/$op" ] || continue
        awk -F'\t' -v name="$op" "$prog" "$CRASH_ROOT/res/$op"
    done
    cat "${@/#/$CRASH_ROOT/res/}" 2>/dev/null | awk -F'\t' -v name=total "$prog"
}

# crash_jtable OP...: per operation and kind of sweep (kill: any:kill and
# pwrite:torn; power: the power-loss sweeps; faults: the others), the
# points run, how many left a journal, and of those how many were resumed
# and aborted (a live job finished by a restarted agent counts as resumed);
# for the offline resumes, the bytes they copied against the bytes
# the journal said were left (sums), and the largest share of one; then
# the same for the live jobs that a restarted agent finished (JOB INFO
# "live:...": the bytes the restored job went over), if any
crash_jtable() {
    local prog='
        { k = ($2 ~ /:pl-/) ? "power" : ($2 == "any:kill" || $2 == "pwrite:torn") ? "kill" : "faults"
          key = $1 " " k; if (!(key in pts)) order[++n] = key
          pts[key]++; fail[key] += ($5 + $6 + $7 + $8 > 0 && $9 == 0)
          if ($11 != "" && $11 != "-") {
              split($11, j, ":"); jr[key]++
              if (j[1] == "resume" || j[1] == "live") { res[key]++
                  if (j[3] != "-" && j[1] == "live") { lnb[key]++; lb[key] += j[3]; ll[key] += j[4]; anylive = 1
                      if (j[4] > 0 && j[3] / j[4] > lmx[key]) lmx[key] = j[3] / j[4] }
                  else if (j[3] != "-") { nb[key]++; b[key] += j[3]; l[key] += j[4]
                      if (j[4] > 0 && j[3] / j[4] > mx[key]) mx[key] = j[3] / j[4] } }
              else ab[key]++ } }
        END { for (i = 1; i <= n; i++) { key = order[i]; split(key, o, " ")
              printf "%-17s %-7s %7d %7d %8d %7d %7d %8d %12d %12d %6.2f\n", o[1], o[2], pts[key],
                  fail[key], jr[key], res[key], ab[key], nb[key], b[key], l[key], mx[key] }
              if (!anylive) exit
              printf "\n%-17s %-7s %8s %12s %12s %6s   (live: a restarted agent resumed the job)\n",
                  "operation", "sweeps", "live", "bytes gone", "bytes left", "max"
              for (i = 1; i <= n; i++) { key = order[i]; split(key, o, " ")
                  if (lnb[key]) printf "%-17s %-7s %8d %12d %12d %6.2f\n", o[1], o[2], lnb[key],
                      lb[key], ll[key], lmx[key] } }'
    printf '%-17s %-7s %7s %7s %8s %7s %7s %8s %12s %12s %6s\n' operation sweeps points failed \
        journal resumed aborted counted "bytes copied" "bytes left" "max"
    cat "${@/#/$CRASH_ROOT/res/}" 2>/dev/null | awk -F'\t' "$prog"
}

# crash_init: the work folder and the tools
crash_init() {
    local t
    for t in qemu-img qemu-io qemu-nbd nbdinfo python3 timeout jq; do
        command -v "$t" >/dev/null 2>&1 || { echo "crash: $t is not installed" >&2; return 1; }
    done
    [ -x "$PROG" ] || { echo "crash: no blockctl at $PROG" >&2; return 1; }
    # a Python with the libnbd bindings reads every bitmap in one go
    # (tests/crash/bitmaps.py); without, nbdinfo reads them one by one
    if [ -z "${CRASH_NBDPY+set}" ]; then
        CRASH_NBDPY=''
        for t in python3 /usr/bin/python3; do
            if "$t" -c 'import nbd' >/dev/null 2>&1; then
                CRASH_NBDPY=$(command -v "$t")
                break
            fi
        done
    fi
    if [ -z "${CRASH_ROOT:-}" ]; then
        local base=/dev/shm
        [ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
        CRASH_ROOT=$(mktemp -d "$base/blockctl-crash.XXXXXX") || return 1
    fi
    mkdir -p "$CRASH_ROOT/res"
}

# the live operations (an agent killed under a guest's writes)
. "$CRASH_LIB_DIR/live.bash"
