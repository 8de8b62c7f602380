#!/usr/bin/env bats
# The copy engine under faults: a full filesystem (RLIMIT_FSIZE), an NBD
# server that dies, SIGINT/SIGTERM, kill -9 mid-copy, and I/O errors injected
# with BLOCKCTL_FAULT (lib/io.h).  Whatever happens: the source is untouched,
# every image passes qemu-img check (leaks allowed after a kill), a stream
# or commit chain still reads as before, and a mirror never leaves a TARGET
# that passes for complete.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_qemu
    setup_chains raw
}

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
    mkdir -p o
}

teardown() {
    copy_teardown
}

source_unchanged() {
    unchanged c/top.qcow2 c/l2.qcow2 c/l1.qcow2 "$BASE"
}

# no_target T: neither T nor T.part exists
no_target() {
    [ ! -e "$1" ] || fail "$1 was left behind"
    [ ! -e "$1.part" ] || fail "$1.part was left behind"
}

# chain_as_before: c/top.qcow2 still has l2 as backing and reads as before,
# every image passes qemu-img check (leaks allowed)
chain_as_before() {
    backing_is c/top.qcow2 l2.qcow2 qcow2
    reads_as c/top.qcow2 "$V/top.raw"
    check_ok_or_leaks c/top.qcow2 c/l2.qcow2 c/l1.qcow2
}

# limited KB CMD...: run CMD with RLIMIT_FSIZE of KB KiB (blockctl ignores
# SIGXFSZ itself, so writes past the limit fail with EFBIG, as on a full
# filesystem)
limited() {
    local kb=$1
    shift
    run --separate-stderr bash -c 'ulimit -f "$1"; shift; exec timeout 60 "$@"' \
        limited "$kb" "$@"
}

# ------------------------------------------------------------ full disk

@test "full filesystem: mirror -O qcow2 fails with one line naming TARGET, leaves nothing" {
    use_chain raw
    limited 2048 "$PROG" mirror -O qcow2 c/top.qcow2 o/t.qcow2
    failed_cleanly
    one_line_error o/t.qcow2
    [[ $stderr == *"too large"* ]] || fail "the reason (File too large) is not given: $stderr"
    no_target o/t.qcow2
    source_unchanged
    # nothing blocks the next attempt
    run --separate-stderr "$PROG" mirror -O qcow2 c/top.qcow2 o/t.qcow2
    [ "$status" -eq 0 ] || fail "mirror after the failure exited $status: $stderr"
    reads_as o/t.qcow2 "$V/top.raw"
}

@test "full filesystem: mirror -O raw fails with one line naming TARGET, leaves nothing" {
    use_chain raw
    limited 2048 "$PROG" mirror -O raw c/top.qcow2 o/t.raw
    failed_cleanly
    one_line_error o/t.raw
    [[ $stderr == *"too large"* ]] || fail "the reason (File too large) is not given: $stderr"
    no_target o/t.raw
    source_unchanged
}

@test "full filesystem: mirror -c (compressed) fails cleanly" {
    use_chain raw
    # the compressed copy is small: the limit is reached while copying
    limited 300 "$PROG" mirror -O qcow2 -c c/top.qcow2 o/t.qcow2
    failed_cleanly
    one_line_error o/t.qcow2
    no_target o/t.qcow2
    source_unchanged
}

@test "full filesystem: stream fails cleanly, TOP keeps its backing file and reads as before" {
    use_chain raw
    limited 4096 "$PROG" stream c/top.qcow2
    failed_cleanly
    [[ $stderr == *top.qcow2* ]] || fail "the error does not name top.qcow2: $stderr"
    chain_as_before
    unchanged c/l2.qcow2 c/l1.qcow2 "$BASE"
}

@test "full filesystem: commit fails cleanly, the chain reads as before" {
    use_chain raw
    limited 4096 "$PROG" commit --base c/l1.qcow2 c/top.qcow2
    failed_cleanly
    [[ $stderr == *l1.qcow2* ]] || fail "the error does not name l1.qcow2: $stderr"
    chain_as_before
    unchanged c/l2.qcow2 "$BASE"
}

@test "full filesystem: commit into the raw base fails cleanly" {
    use_chain raw
    limited 4096 "$PROG" commit --base c/b/base.raw c/top.qcow2
    failed_cleanly
    [[ $stderr == *base.raw* ]] || fail "the error does not name base.raw: $stderr"
    chain_as_before
    unchanged c/l2.qcow2 c/l1.qcow2
}

# ------------------------------------------------------------ NBD server dies

@test "NBD target server killed mid-copy: mirror fails within seconds naming the URI" {
    requires_cmd qemu-nbd
    use_chain raw
    mkq t.qcow2 $CHAIN_SIZE
    nbd_serve t -f qcow2 t.qcow2
    bg_start out err timeout 30 "$PROG" mirror --bandwidth 2M c/top.qcow2 "$NBD_URI"
    sleep 1
    kill -0 "$BG_PID" || fail "mirror already ended: $(cat err)"
    server_stop "$NBD_PIDFILE" KILL
    bg_wait "$BG_PID" 30
    [ "$BG_STATUS" -ne 124 ] || fail "mirror hangs after the server died"
    [ "$BG_STATUS" -ne 0 ] || fail "mirror exited 0 after its server died"
    [ "$BG_STATUS" -lt 128 ] || fail "mirror died of signal $((BG_STATUS - 128)): $(cat err)"
    [ "$BG_SECS" -le 10 ] || fail "mirror took $BG_SECS s to notice"
    grep -qF "$NBD_SOCK" err || fail "the error does not name the URI: $(cat err)"
    source_unchanged
}

@test "NBD source server killed mid-copy: mirror fails naming the URI, no TARGET left" {
    requires_cmd qemu-nbd
    use_chain raw
    nbd_serve src -r -f qcow2 c/top.qcow2
    bg_start out err timeout 30 "$PROG" mirror -O qcow2 --bandwidth 2M "$NBD_URI" o/t.qcow2
    sleep 1
    kill -0 "$BG_PID" || fail "mirror already ended: $(cat err)"
    server_stop "$NBD_PIDFILE" KILL
    bg_wait "$BG_PID" 30
    [ "$BG_STATUS" -ne 124 ] || fail "mirror hangs after the server died"
    [ "$BG_STATUS" -ne 0 ] || fail "mirror exited 0 after its server died"
    [ "$BG_STATUS" -lt 128 ] || fail "mirror died of signal $((BG_STATUS - 128)): $(cat err)"
    [ "$BG_SECS" -le 10 ] || fail "mirror took $BG_SECS s to notice"
    grep -qF "$NBD_SOCK" err || fail "the error does not name the URI: $(cat err)"
    no_target o/t.qcow2
    source_unchanged
}

# ------------------------------------------------------------ signals

@test "SIGINT mid-mirror: exit 130, a message, no TARGET and no TARGET.part" {
    use_chain raw
    bg_start out err "$PROG" mirror --progress=json --bandwidth 4M c/top.qcow2 o/t.qcow2
    wait_progress out 20
    kill -INT "$BG_PID"
    bg_wait "$BG_PID" 20
    [ "$BG_STATUS" -eq 130 ] || fail "exit status $BG_STATUS, expected 130: $(cat err)"
    grep -q 't.qcow2' err || fail "no message naming the target: $(cat err)"
    no_target o/t.qcow2
    source_unchanged
}

@test "SIGTERM mid-mirror -n: exit 143, says the target is incomplete" {
    use_chain raw
    mkq o/t.qcow2 $CHAIN_SIZE
    bg_start out err "$PROG" mirror -n --progress=json --bandwidth 4M c/top.qcow2 o/t.qcow2
    wait_progress out 20
    kill -TERM "$BG_PID"
    bg_wait "$BG_PID" 20
    [ "$BG_STATUS" -eq 143 ] || fail "exit status $BG_STATUS, expected 143: $(cat err)"
    grep -q 'o/t.qcow2.*incomplete' err || fail "no message saying TARGET is incomplete: $(cat err)"
    check_ok o/t.qcow2
    source_unchanged
}

@test "SIGINT mid-stream: exit 130, TOP keeps its backing file, reads as before, check clean" {
    use_chain raw
    bg_start out err "$PROG" stream --progress=json --bandwidth 4M c/top.qcow2
    wait_progress out 20
    kill -INT "$BG_PID"
    bg_wait "$BG_PID" 20
    [ "$BG_STATUS" -eq 130 ] || fail "exit status $BG_STATUS, expected 130: $(cat err)"
    [ -s err ] || fail "no message"
    backing_is c/top.qcow2 l2.qcow2 qcow2
    reads_as c/top.qcow2 "$V/top.raw"
    check_ok c/top.qcow2
    unchanged c/l2.qcow2 c/l1.qcow2 "$BASE"
    # running it again finishes the job
    run --separate-stderr "$PROG" stream c/top.qcow2
    [ "$status" -eq 0 ] || fail "second stream exited $status: $stderr"
    backing_is c/top.qcow2 '' ''
    reads_as c/top.qcow2 "$V/top.raw"
}

@test "SIGINT mid-commit: exit 130, the chain reads as before, check clean" {
    use_chain raw
    bg_start out err "$PROG" commit --progress=json --bandwidth 4M --base c/b/base.raw c/top.qcow2
    wait_progress out 20
    kill -INT "$BG_PID"
    bg_wait "$BG_PID" 20
    [ "$BG_STATUS" -eq 130 ] || fail "exit status $BG_STATUS, expected 130: $(cat err)"
    [ -s err ] || fail "no message"
    chain_as_before
    check_ok c/top.qcow2 c/l2.qcow2 c/l1.qcow2
    run --separate-stderr "$PROG" commit --base c/b/base.raw c/top.qcow2
    [ "$status" -eq 0 ] || fail "second commit exited $status: $stderr"
    reads_as c/b/base.raw "$V/top.raw" -f raw
    reads_as c/top.qcow2 "$V/top.raw"
}

# ------------------------------------------------------------ kill -9

@test "kill -9 mid-mirror: source intact, no TARGET, TARGET.part passes qemu-img check" {
    use_chain raw
    bg_start out err "$PROG" mirror --progress=json --bandwidth 4M c/top.qcow2 o/t.qcow2
    wait_progress out 20
    kill -KILL "$BG_PID"
    bg_wait "$BG_PID" 10
    [ "$BG_STATUS" -eq 137 ] || fail "exit status $BG_STATUS"
    [ ! -e o/t.qcow2 ] || fail "TARGET exists after kill -9"
    if [ -e o/t.qcow2.part ]; then
        check_ok_or_leaks o/t.qcow2.part
    fi
    source_unchanged
    check_ok c/top.qcow2 c/l2.qcow2 c/l1.qcow2
}

@test "after kill -9, the same mirror again completes (the leftover TARGET.part is replaced)" {
    use_chain raw
    bg_start out err "$PROG" mirror --progress=json --bandwidth 4M c/top.qcow2 o/t.qcow2
    wait_progress out 20
    kill -KILL "$BG_PID"
    bg_wait "$BG_PID" 10
    run --separate-stderr "$PROG" mirror c/top.qcow2 o/t.qcow2
    [ "$status" -eq 0 ] || fail "mirror after kill -9 exited $status: $stderr"
    reads_as o/t.qcow2 "$V/top.raw"
    check_ok o/t.qcow2
    [ ! -e o/t.qcow2.part ]
}

@test "kill -9 mid-stream: the chain reads as before, every image passes qemu-img check" {
    use_chain raw
    bg_start out err "$PROG" stream --progress=json --bandwidth 4M c/top.qcow2
    wait_progress out 20
    kill -KILL "$BG_PID"
    bg_wait "$BG_PID" 10
    [ "$BG_STATUS" -eq 137 ] || fail "exit status $BG_STATUS"
    chain_as_before
    unchanged c/l2.qcow2 c/l1.qcow2 "$BASE"
    run --separate-stderr "$PROG" stream c/top.qcow2
    [ "$status" -eq 0 ] || fail "stream after kill -9 exited $status: $stderr"
    reads_as c/top.qcow2 "$V/top.raw"
}

@test "kill -9 mid-commit: the chain reads as before, every image passes qemu-img check" {
    use_chain raw
    bg_start out err "$PROG" commit --progress=json --bandwidth 4M --base c/l1.qcow2 c/top.qcow2
    wait_progress out 20
    kill -KILL "$BG_PID"
    bg_wait "$BG_PID" 10
    [ "$BG_STATUS" -eq 137 ] || fail "exit status $BG_STATUS"
    chain_as_before
    unchanged "$BASE"
    run --separate-stderr "$PROG" commit --base c/l1.qcow2 c/top.qcow2
    [ "$status" -eq 0 ] || fail "commit after kill -9 exited $status: $stderr"
    reads_as c/l1.qcow2 "$V/top.raw"
    reads_as c/top.qcow2 "$V/top.raw"
}

# ------------------------------------------------------------ BLOCKCTL_FAULT

# faulted RULES CMD...: run CMD with BLOCKCTL_FAULT=RULES
faulted() {
    local rules=$1
    shift
    run --separate-stderr env BLOCKCTL_FAULT="$rules" timeout 60 "$@"
}

@test "fault: mirror write error on TARGET.part: one line naming TARGET, nothing left" {
    use_chain raw
    faulted 'pwrite:5:eio:*.part' "$PROG" mirror c/top.qcow2 o/t.qcow2
    failed_cleanly
    one_line_error o/t.qcow2
    no_target o/t.qcow2
    source_unchanged
}

@test "fault: mirror -O raw short write (ENOSPC): nothing left" {
    use_chain raw
    faulted 'pwrite:3:short:*.part' "$PROG" mirror -O raw c/top.qcow2 o/t.raw
    failed_cleanly
    one_line_error o/t.raw
    no_target o/t.raw
    source_unchanged
}

@test "fault: mirror read error on a backing file of the source: fails naming it" {
    use_chain raw
    # the first reads of l1 open it; later ones are its tables and data
    faulted 'pread:6+:eio:l1.qcow2' "$PROG" mirror c/top.qcow2 o/t.qcow2
    failed_cleanly
    [[ $stderr == *l1.qcow2* ]] || fail "the error does not name l1.qcow2: $stderr"
    no_target o/t.qcow2
    source_unchanged
}

@test "fault: mirror flush error after the copy: TARGET is not made" {
    use_chain raw
    # the first sync is the creation of TARGET.part, the next ones the copy's
    faulted 'sync:2+:eio:*.part' "$PROG" mirror c/top.qcow2 o/t.qcow2
    failed_cleanly
    one_line_error o/t.qcow2
    no_target o/t.qcow2
    source_unchanged
}

@test "fault: mirror cannot create TARGET.part: the real reason, nothing left" {
    use_chain raw
    faulted 'sync:1:eio:*.part' "$PROG" mirror c/top.qcow2 o/t.qcow2
    failed_cleanly
    one_line_error o/t.qcow2
    [[ $stderr == *"Input/output error"* ]] || fail "the reason (EIO) is not given: $stderr"
    no_target o/t.qcow2
    source_unchanged
}

@test "fault: mirror rename error: TARGET is not made, TARGET.part removed" {
    use_chain raw
    faulted 'rename:*:eio' "$PROG" mirror c/top.qcow2 o/t.qcow2
    failed_cleanly
    no_target o/t.qcow2
    source_unchanged
}

@test "fault: mirror -n write error: non-zero, says the target is incomplete" {
    use_chain raw
    mkq o/t.qcow2 $CHAIN_SIZE
    faulted 'pwrite:3:eio:t.qcow2' "$PROG" mirror -n c/top.qcow2 o/t.qcow2
    failed_cleanly
    [[ $stderr == *incomplete* ]] || fail "does not say the target is incomplete: $stderr"
    check_ok_or_leaks o/t.qcow2
    source_unchanged
}

@test "fault: mirror torn data writes (killed mid-write): TARGET absent, TARGET.part checks" {
    use_chain raw
    local n
    # writes 1-6 create the image (the 6th is an 8-byte L1 entry, which
    # storage does not tear); from the 7th on the copy writes data
    for n in 9 12; do
        rm -f o/t.qcow2.part
        faulted "pwrite:$n:torn:*.part" "$PROG" mirror c/top.qcow2 o/t.qcow2
        [ "$status" -eq 137 ] || fail "torn $n: exit status $status: $stderr"
        [ ! -e o/t.qcow2 ] || fail "TARGET exists"
        [ ! -e o/t.qcow2.part ] || check_ok_or_leaks o/t.qcow2.part
    done
    source_unchanged
}

@test "fault: stream write errors: non-zero, the chain reads as before" {
    use_chain raw
    local rule
    for rule in 'pwrite:2:eio:top.qcow2' 'pwrite:5:short:top.qcow2' 'sync:*:eio:top.qcow2'; do
        faulted "$rule" "$PROG" stream c/top.qcow2
        failed_cleanly || fail "with BLOCKCTL_FAULT=$rule"
        [[ $stderr == *top.qcow2* ]] || fail "$rule: the error does not name top.qcow2: $stderr"
        chain_as_before || fail "with BLOCKCTL_FAULT=$rule"
    done
    unchanged c/l2.qcow2 c/l1.qcow2 "$BASE"
}

@test "fault: stream read error in the chain: non-zero, TOP unchanged" {
    use_chain raw
    faulted 'pread:5+:eio:l2.qcow2' "$PROG" stream c/top.qcow2
    failed_cleanly
    [[ $stderr == *l2.qcow2* ]] || fail "the error does not name l2.qcow2: $stderr"
    chain_as_before
    unchanged c/l2.qcow2 c/l1.qcow2 "$BASE"
}

@test "fault: stream killed by torn writes: the chain reads as before" {
    use_chain raw
    local n
    for n in 1 3 6; do
        faulted "pwrite:$n:torn:top.qcow2" "$PROG" stream c/top.qcow2
        [ "$status" -eq 137 ] || [ "$status" -eq 0 ] || fail "torn $n: exit status $status: $stderr"
        if [ "$status" -eq 137 ]; then
            chain_as_before || fail "after a torn write $n"
        else
            reads_as c/top.qcow2 "$V/top.raw"
        fi
    done
    unchanged c/l2.qcow2 c/l1.qcow2 "$BASE"
}

@test "fault: commit write errors into the base: non-zero, the chain reads as before" {
    use_chain raw
    local rule
    for rule in 'pwrite:2:eio:l2.qcow2' 'pwrite:7:short:l2.qcow2' 'sync:*:eio:l2.qcow2'; do
        faulted "$rule" "$PROG" commit c/top.qcow2
        failed_cleanly || fail "with BLOCKCTL_FAULT=$rule"
        [[ $stderr == *l2.qcow2* ]] || fail "$rule: the error does not name l2.qcow2: $stderr"
        chain_as_before || fail "with BLOCKCTL_FAULT=$rule"
    done
    unchanged c/l1.qcow2 "$BASE"
}

@test "fault: commit write error into the raw base: non-zero, the chain reads as before" {
    use_chain raw
    faulted 'pwrite:4:eio:base.raw' "$PROG" commit --base c/b/base.raw c/top.qcow2
    failed_cleanly
    [[ $stderr == *base.raw* ]] || fail "the error does not name base.raw: $stderr"
    chain_as_before
}

@test "fault: commit --top fails re-pointing the image above: the chain reads as before" {
    use_chain raw
    # top.qcow2 is written only for its header (the new backing file)
    faulted 'pwrite:*:eio:top.qcow2' "$PROG" commit --top c/l2.qcow2 c/top.qcow2
    failed_cleanly
    [[ $stderr == *top.qcow2* ]] || fail "the error does not name top.qcow2: $stderr"
    chain_as_before
    unchanged c/top.qcow2 "$BASE"
}

@test "fault: commit fails emptying TOP: the chain still reads as before" {
    use_chain raw
    faulted 'pwrite:1+:eio:top.qcow2,fallocate:*:eio:top.qcow2,ftruncate:*:eio:top.qcow2' \
        "$PROG" commit c/top.qcow2
    failed_cleanly
    reads_as c/top.qcow2 "$V/top.raw"
    reads_as c/l2.qcow2 "$V/top.raw"
    check_ok_or_leaks c/top.qcow2 c/l2.qcow2
}

@test "fault: commit killed by torn writes into the base: the chain reads as before" {
    use_chain raw
    local n
    for n in 2 9; do
        faulted "pwrite:$n:torn:l1.qcow2" "$PROG" commit --base c/l1.qcow2 c/top.qcow2
        [ "$status" -eq 137 ] || [ "$status" -eq 0 ] || fail "torn $n: exit status $status: $stderr"
        reads_as c/top.qcow2 "$V/top.raw"
        check_ok_or_leaks c/top.qcow2 c/l2.qcow2 c/l1.qcow2
    done
    unchanged "$BASE"
}
