#!/usr/bin/env bats
# QEMU-compatible image locking: an image qemu-nbd serves is refused to
# blockctl writers (and to plain readers while it is served read-write),
# -U still reads it; and the locks blockctl holds stop QEMU's writers.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0
BATS_TEST_TIMEOUT=60

setup_file() {
    requires_qemu
    requires_cmd qemu-nbd
    cd "$BATS_FILE_TMPDIR" || return 1
    mkq img.qcow2 4M
    qio img.qcow2 'write -P 1 0 64k' 'write -P 2 1M 128k'
    mkq base.qcow2 4M
    qio base.qcow2 'write -P 3 0 1M'
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2
    qio ov.qcow2 'write -P 4 512k 64k'
    # many.qcow2: 2048 separate extents, so that `map --output=json` prints
    # far more than a pipe holds
    mkq many.qcow2 16M cluster_size=4k
    local i cmds=()
    for ((i = 0; i < 4096; i += 2)); do cmds+=("write -P 1 $((i * 4096)) 4096"); done
    qio many.qcow2 "${cmds[@]}"
}

setup() {
    requires_qemu
    requires_cmd qemu-nbd
    cd "$BATS_TEST_TMPDIR" || return 1
    cp "$BATS_FILE_TMPDIR"/{img,base,ov}.qcow2 .
}

teardown() {
    local p
    if [ -s nbd.pid ]; then
        p=$(cat nbd.pid)
        kill "$p" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    fi
    if [ -n "${BG_PID:-}" ]; then
        kill "$BG_PID" 2>/dev/null || true
        wait "$BG_PID" 2>/dev/null || true
    fi
    exec 5>&- 2>/dev/null || true
}

# serve ARGS... IMG: qemu-nbd in the background, holding IMG open
serve() {
    timeout 20 qemu-nbd -f qcow2 --fork --pid-file "$PWD/nbd.pid" -k "$PWD/s" "$@" 3>&-
    [ -s nbd.pid ]
}

# locks IMG: the lock ranges held on IMG, "TYPE START END" sorted
locks() {
    local ino
    ino=$(stat -c %i "$1")
    awk -v ino="$ino" '{ n = split($6, a, ":"); if (a[n] == ino) print $2, $4, $7, $8 }' /proc/locks |
        sort
}

@test "qemu-nbd read-write: check -r all is refused with 'Failed to get'" {
    serve img.qcow2
    cp img.qcow2 before.qcow2
    run -1 qemu-img check -r all img.qcow2
    run -1 --separate-stderr "$PROG" check -r all img.qcow2
    [[ $stderr == *"Failed to get"* ]]
    [[ $stderr == *img.qcow2* ]]
    cmp img.qcow2 before.qcow2
}

@test "qemu-nbd read-write: check -r leaks is refused" {
    serve img.qcow2
    run -1 --separate-stderr "$PROG" check -r leaks img.qcow2
    [[ $stderr == *"Failed to get"* ]]
}

@test "qemu-nbd read-write: plain info, map, check and compare are refused" {
    serve img.qcow2
    run -1 qemu-img info img.qcow2
    run -1 --separate-stderr "$PROG" info img.qcow2
    [[ $stderr == *'Failed to get shared "write" lock'* ]]
    run -1 --separate-stderr "$PROG" map --output=json img.qcow2
    [[ $stderr == *"Failed to get"* ]]
    run -1 --separate-stderr "$PROG" check img.qcow2
    [[ $stderr == *"Failed to get"* ]]
    run -2 qemu-img compare img.qcow2 base.qcow2
    run -2 --separate-stderr "$PROG" compare img.qcow2 base.qcow2
    [[ $stderr == *"Failed to get"* ]]
}

@test "qemu-nbd read-write: info -U, map -U, check -U and compare -U work as in qemu-img" {
    serve img.qcow2
    qemu_info_equal -U img.qcow2
    qemu_map_equal -U img.qcow2
    qemu_check_equal -U img.qcow2
    run -1 qemu-img compare -U img.qcow2 base.qcow2
    local want=$output
    run -1 "$PROG" compare -U img.qcow2 base.qcow2
    [ "$output" = "$want" ]
}

@test "qemu-nbd read-write: create --force over the served image is refused" {
    serve img.qcow2
    cp img.qcow2 before.qcow2
    run --separate-stderr "$PROG" create -q --force -f qcow2 img.qcow2 1M
    [ "$status" -ne 0 ]
    [[ $stderr == *"Failed to get"* ]]
    cmp img.qcow2 before.qcow2
}

@test "qemu-nbd read-only: plain info and check work, check -r all is refused" {
    serve -r img.qcow2
    qemu_info_equal img.qcow2
    qemu_check_equal img.qcow2
    qemu_map_equal img.qcow2
    run -1 qemu-img check -r all img.qcow2
    run -1 --separate-stderr "$PROG" check -r all img.qcow2
    [[ $stderr == *'Failed to get "write" lock'* ]]
}

@test "qemu-nbd read-write on an overlay: its backing file reads, but is not writable" {
    serve ov.qcow2
    qemu_info_equal base.qcow2
    run -0 "$PROG" compare base.qcow2 base.qcow2
    run -1 qemu-img check -r all base.qcow2
    run -1 --separate-stderr "$PROG" check -r all base.qcow2
    [[ $stderr == *"Failed to get"* ]]
    # and the served overlay itself is not readable without -U
    run -1 --separate-stderr "$PROG" info ov.qcow2
}

@test "after qemu-nbd exits, check -r all works again" {
    serve img.qcow2
    run -1 "$PROG" check -r all img.qcow2
    kill "$(cat nbd.pid)"
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$(cat nbd.pid)" 2>/dev/null || break; sleep 0.1; done
    rm -f nbd.pid
    run -0 "$PROG" check -r all img.qcow2
}

# hold_with_blockctl [OPTIONS]: blockctl holds many.qcow2 open: `map
# --output=json` writes into a pipe that nobody reads, and blocks once the
# pipe is full
hold_with_blockctl() {
    cp "$BATS_FILE_TMPDIR/many.qcow2" .
    mkfifo out.pipe
    exec 5<>out.pipe
    "$PROG" map "$@" --output=json many.qcow2 >out.pipe 2>/dev/null 3>&- &
    BG_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$BG_PID" 2>/dev/null || break
        if [ -n "$(locks many.qcow2)" ]; then
            sleep 0.2
            kill -0 "$BG_PID" 2>/dev/null && [ -n "$(locks many.qcow2)" ] && return 0
        fi
        sleep 0.1
    done
    skip "blockctl did not stay open while its output was blocked"
}

@test "blockctl reading an image blocks qemu-io writers, not qemu-img readers" {
    hold_with_blockctl
    run -1 timeout 20 qemu-io -c 'write 0 512' many.qcow2 3>&-
    [[ $output == *'Failed to get "write" lock'* ]]
    run -0 timeout 20 qemu-img info many.qcow2 3>&-
}

@test "blockctl reading an image takes the same lock bytes as qemu-nbd -r" {
    hold_with_blockctl
    local ours theirs
    ours=$(locks many.qcow2)
    kill "$BG_PID"
    wait "$BG_PID" 2>/dev/null || true
    BG_PID=
    serve -r img.qcow2
    theirs=$(locks img.qcow2)
    text_diff "$ours" "$theirs" "/proc/locks of a reader"
}

@test "blockctl reading with -U takes only the shared read lock, as qemu does" {
    hold_with_blockctl -U
    # qemu-io -U -r holds byte 100 only (consistent read, sharing all)
    local ours
    ours=$(locks many.qcow2)
    text_diff "$ours" "OFDLCK READ 100 100" "/proc/locks of a -U reader"
    # a qemu-io writer is not blocked by a force-share reader
    run -0 timeout 20 qemu-io -c 'write -P 9 0 512' many.qcow2 3>&-
    [[ $output != *"Failed to get"* ]]
}
