#!/usr/bin/env bats
# dist/blockctl-backup, the README's nightly backup recipe, run for many
# nights on tiny disks: offline (a stopped VM's image, written by qemu-io)
# and live (a disk blockctl agent serves, written through its NBD export).
# Each night a few random writes change the disk, a raw copy of the disk
# as it was is kept, and the script runs; then every image the backup
# folder still holds must read as the disk did on its night (qemu-img
# compare), full.qcow2 as the newest night merged into it, the chain must
# never hold more than KEEP+1 images, and every image must pass qemu-img
# check.  Also: a run killed at every step (before and inside each
# blockctl call) and the next night's run leave a consistent, restorable
# chain; a bitmap left in use by a crash is salvaged and that night copies
# the whole disk into the same chain.
# make check runs BACKUP_NIGHTS (default 300 offline, 30 live);
# `make backup-test` runs 300 of both.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
bats_require_minimum_version 1.5.0

setup() {
    requires_qemu
    requires_cmd flock
    cd "$BATS_TEST_TMPDIR" || return 1
    SCRIPT=$(cd "$BATS_TEST_DIRNAME/../../dist" && pwd)/blockctl-backup
    export BLOCKCTL=$PROG
    mkdir s bk vm
    RANDOM=$((0x5eed + BATS_TEST_NUMBER))
    SIZE=$(((2 << 20) + 7680))
    MADE=() FULL_NIGHT=0 LIVE='' KEEP=3
}

teardown() {
    copy_teardown
}

# ------------------------------------------------------------ the disk

# offline_disk: vm/disk.qcow2, with some data
offline_disk() {
    DISK=$PWD/vm/disk.qcow2
    mkq "$DISK" "$SIZE"
    qio "$DISK" 'write -P 0x11 0 256k' 'write -P 0x12 1M 64k'
}

# live_disk: the same, served by blockctl agent as vda
live_disk() {
    offline_disk
    LIVE=1
    AGENT=$(sock_path qmp) NBD=$(sock_path nbd)
    agent_start --disk "vda=$DISK"
    URI="nbd+unix:///vda?socket=$NBD"
}

# agent_start ARGS...: blockctl agent on $AGENT and $NBD, state in agent.state
agent_start() {
    echo "$BATS_TEST_TMPDIR/agent.pid" >>"$BATS_TEST_TMPDIR/.servers"
    "$PROG" agent --qmp "$AGENT" --nbd "unix:$NBD" --state "$BATS_TEST_TMPDIR/agent.state" "$@" \
        --daemonize --pidfile "$BATS_TEST_TMPDIR/agent.pid" 3>&- 2>>agent.log ||
        { fail "the agent did not start: $(cat agent.log)"; return 1; }
}

# day: a few random writes (data, zeroes, discards) anywhere on the disk
day() {
    local cmds=() k n=$((1 + RANDOM % 3)) off len
    for ((k = 0; k < n; k++)); do
        off=$(((RANDOM * 32768 + RANDOM) % (SIZE / 512) * 512))
        len=$(((1 + RANDOM % 256) * 512))
        [ $((off + len)) -le "$SIZE" ] || len=$((SIZE - off))
        case $((RANDOM % 8)) in
        0) cmds+=(-c "write -z $off $len") ;;
        1) cmds+=(-c "discard $off $len") ;;
        *) cmds+=(-c "write -P $((RANDOM % 255 + 1)) $off $len") ;;
        esac
    done
    if [ -n "$LIVE" ]; then
        qemu-io -f raw "${cmds[@]}" "$URI" >/dev/null || { fail "qemu-io through the agent failed"; return 1; }
    else
        qemu-io -f qcow2 "${cmds[@]}" "$DISK" >/dev/null || { fail "qemu-io on the disk failed"; return 1; }
    fi
}

# keep_copy N: the disk as it is now, in s/N.raw
keep_copy() {
    if [ -n "$LIVE" ]; then
        qemu-img convert -f raw -O raw "$URI" "s/$1.raw"
    else
        qemu-img convert -U -f qcow2 -O raw "$DISK" "s/$1.raw"
    fi
}

# ------------------------------------------------------------ the nights

stamp() {
    printf '%06d' "$1"
}

# images: the incremental images bk holds, by night
images() {
    local f
    for f in bk/inc-*.qcow2; do
        [ -e "$f" ] || continue
        f=${f#bk/inc-}
        echo $((10#${f%.qcow2}))
    done
}

# run_night N [ENV...]: night N's run of the script; status in $status
run_night() {
    local n=$1 target=$DISK
    shift
    [ -z "$LIVE" ] || target=vda
    # (its own process group: a wrapper may kill -9 the whole run)
    run --separate-stderr env "$@" timeout 120 setsid -w "$SCRIPT" ${LIVE:+--agent "$AGENT"} \
        --keep "$KEEP" --stamp "$(stamp "$n")" "$target" "$PWD/bk"
}

# after_night N: the books: which nights have images, which night
# full.qcow2 holds (the newest merged into it); copies no longer needed go
after_night() {
    local n=$1 m now gone=0
    now=" $(images | tr '\n' ' ')"
    for m in "${MADE[@]}"; do
        [[ $now == *" $m "* ]] || [ "$m" -le "$gone" ] || gone=$m
    done
    [ "$gone" -eq 0 ] || FULL_NIGHT=$gone
    if [ "$FULL_NIGHT" -eq 0 ] && [ -e bk/full.qcow2 ]; then
        FULL_NIGHT=$n
    fi
    MADE=($(images))
    for m in s/*.raw; do
        m=${m#s/}
        m=${m%.raw}
        [ "$m" -ge "$FULL_NIGHT" ] || rm -f "s/$m.raw"
    done
}

# same IMG N: IMG reads as the disk did on night N
same() {
    qemu-img compare -U -q -f qcow2 -F raw "$1" "s/$2.raw" ||
        { fail "$1 does not read as the disk of night $2"; return 1; }
}

# books_ok: every image bk holds reads as its night; the chain is short
# and linked newest to oldest, nothing else is left in bk
books_ok() {
    local m n=0 prev=full.qcow2 f
    [ -e bk/full.qcow2 ] || { fail "no full.qcow2"; return 1; }
    same bk/full.qcow2 "$FULL_NIGHT" || return 1
    for m in $(images); do
        same "bk/inc-$(stamp "$m").qcow2" "$m" || return 1
        [ "$m" -gt "$FULL_NIGHT" ] || { fail "inc of night $m kept but full.qcow2 is night $FULL_NIGHT"; return 1; }
        [ "$(qemu-img info -U --output=json "bk/inc-$(stamp "$m").qcow2" | jq -r '."backing-filename"')" = "$prev" ] ||
            { fail "inc-$(stamp "$m") is not backed by $prev"; return 1; }
        prev=inc-$(stamp "$m").qcow2
        n=$((n + 1))
    done
    [ "$n" -le "$KEEP" ] || { fail "$n incremental images kept, --keep $KEEP"; return 1; }
    for f in bk/* bk/.[!.]*; do
        case $f in
        bk/full.qcow2 | bk/inc-*.qcow2 | bk/.lock | 'bk/.[!.]*') ;;
        *) fail "$f left in the backup folder"; return 1 ;;
        esac
    done
    if [ -n "$LIVE" ]; then
        # the VM side: the disk's chain is its image and tonight's overlay
        local chain
        chain=$("$PROG" info --agent "$AGENT" --backing-chain vda | grep -c '^image: ')
        [ "$chain" -le 2 ] || { fail "the disk's chain holds $chain images"; return 1; }
        [ "$(ls vm | wc -l)" -le 2 ] || { fail "vm holds $(ls vm)"; return 1; }
    fi
}

# all_checked: qemu-img check of every image (leaked clusters allowed:
# a commit killed half-way may leave some in full.qcow2)
all_checked() {
    local f
    for f in bk/*.qcow2; do
        check_ok_or_leaks "$f" || return 1
    done
}

# nights FROM TO: the nights FROM..TO: a day of writes, a copy, the run;
# each must succeed and leave the books right
nights() {
    local n
    for ((n = $1; n <= $2; n++)); do
        day || return 1
        keep_copy "$n"
        run_night "$n"
        [ "$status" -eq 0 ] || { fail "night $n: the script exited $status: $stderr"; return 1; }
        [ -z "$stderr" ] || { fail "night $n: the script printed: $stderr"; return 1; }
        [ -e "bk/inc-$(stamp "$n").qcow2" ] || [ "$n" -eq 1 ] ||
            { fail "night $n made no image"; return 1; }
        after_night "$n"
        # tonight's image, every night; everything every 25 nights and at the end
        if [ $((n % 25)) -eq 0 ] || [ "$n" -eq "$2" ]; then
            books_ok || { fail "after night $n"; return 1; }
        else
            [ "$(images | wc -l)" -le "$KEEP" ] || { fail "night $n: $(images | wc -l) images kept"; return 1; }
            same "bk/$( [ "$n" -eq 1 ] && echo full.qcow2 || echo "inc-$(stamp "$n").qcow2")" "$n" || return 1
        fi
    done
}

# restored_ok N: the newest image, flattened by blockctl and by qemu-img, is night N's disk
restored_ok() {
    local last=bk/inc-$(stamp "$1").qcow2
    "$PROG" mirror -O raw "$last" r1.raw || { fail "restore by blockctl mirror failed"; return 1; }
    cmp r1.raw "s/$1.raw" || { fail "blockctl's restore differs"; return 1; }
    qemu-img convert -O raw "$last" r2.raw
    cmp r2.raw "s/$1.raw" || { fail "qemu-img's restore differs"; return 1; }
}

# ------------------------------------------------------------ tests

@test "offline: ${BACKUP_NIGHTS:-300} nights, --keep 3: each night's image reads as the disk did, full.qcow2 as the newest merged night, chain <= 4 images" {
    local nights=${BACKUP_NIGHTS:-300}
    offline_disk
    nights 1 "$nights"
    all_checked
    restored_ok "$nights"
    qemu_clean "$DISK"
    # the bitmap was cleared by the last night, and consistent
    [ "$("$PROG" bitmap --dump --output=json "$DISK" backup)" = "[]" ] || fail "bitmap not cleared"
}

@test "live (--agent): ${BACKUP_LIVE_NIGHTS:-30} nights while the agent serves the disk: the same, the disk's chain stays at 2 images" {
    local nights=${BACKUP_LIVE_NIGHTS:-30}
    live_disk
    nights 1 "$nights"
    all_checked
    restored_ok "$nights"
    # what is left to copy: nothing (no write since the last snapshot)
    run --separate-stderr "$PROG" bitmap --agent "$AGENT" --dump --output=json vda backup
    [ "$output" = "[]" ] || fail "the disk's bitmap after the last night: $output $stderr"
    server_stop "$BATS_TEST_TMPDIR/agent.pid"
    for f in vm/*.qcow2; do qemu_clean "$f"; done
}

# killed_nights: night by night, kill the script at each blockctl call it
# makes (after the call; or inside it, at its first write, by
# BLOCKCTL_FAULT=pwrite:1:kill), then run the next night normally: the
# books must be right after it
killed_nights() {
    local n=$1 calls k how
    # how many calls a night makes (with retention at work)
    cat >wrap <<EOF
#!/bin/sh
n=\$((\$(cat "$PWD/count") + 1))
echo \$n >"$PWD/count"
if [ "\$n" = "\${WRAP_CALL:-0}" ]; then
    case \$WRAP_HOW in
    after) "$PROG" "\$@"; kill -KILL 0 ;;
    inside) BLOCKCTL_FAULT=pwrite:1:kill exec "$PROG" "\$@" ;;
    esac
fi
exec "$PROG" "\$@"
EOF
    chmod +x wrap
    echo 0 >count
    day && keep_copy "$n"
    run_night "$n" BLOCKCTL="$PWD/wrap"
    [ "$status" -eq 0 ] || { fail "night $n exited $status: $stderr"; return 1; }
    after_night "$n"
    calls=$(cat count)
    [ "$calls" -ge 3 ] || { fail "a night makes only $calls blockctl calls"; return 1; }
    for ((k = 1; k <= calls; k++)); do
        for how in after inside; do
            n=$((n + 1))
            day && keep_copy "$n"
            echo 0 >count
            run_night "$n" BLOCKCTL="$PWD/wrap" WRAP_CALL="$k" WRAP_HOW="$how"
            [ "$status" -ne 0 ] || [ "$how" = inside ] ||
                { fail "night $n (killed after call $k) exited 0"; return 1; }
            after_night "$n"
            n=$((n + 1))
            day && keep_copy "$n"
            run_night "$n"
            [ "$status" -eq 0 ] || { fail "night $n, after a run killed $how call $k: exit $status: $stderr"; return 1; }
            after_night "$n"
            books_ok || { fail "night $n, after a run killed $how call $k of $calls"; return 1; }
            all_checked || return 1
        done
    done
    restored_ok "$n"
}

@test "offline: a run killed after or inside each of its blockctl calls, then the next night: the chain is consistent and restorable" {
    offline_disk
    nights 1 4
    killed_nights 5
    qemu_clean "$DISK"
}

@test "live: a run killed after or inside each of its blockctl calls, then the next night: the chain is consistent and restorable, the disk's chain short" {
    live_disk
    nights 1 4
    killed_nights 5
    server_stop "$BATS_TEST_TMPDIR/agent.pid"
    for f in vm/*.qcow2; do qemu_clean "$f"; done
}

@test "offline: a bitmap left in use by kill -9 of a writer is salvaged: that night copies the whole disk into the same chain, the next only its writes" {
    offline_disk
    nights 1 3
    day
    bg_start qio.out qio.err qemu-io -f qcow2 -c 'write -P 0x77 512k 4k' -c 'sleep 100000' "$DISK"
    local n=50
    until qemu-img info -U --output=json "$DISK" | jq -e '."format-specific".data.bitmaps[0].flags | index("in-use")' >/dev/null; do
        n=$((n - 1))
        [ $n -gt 0 ] || fail "qemu-io never loaded the bitmap"
        sleep 0.1
    done
    kill -KILL "$BG_PID"
    bg_wait "$BG_PID" 5
    keep_copy 4
    run_night 4
    [ "$status" -eq 0 ] || fail "exit $status: $stderr"
    [[ $stderr == *salvaged* && $stderr == *backup* ]] || fail "no word of the salvage: $stderr"
    after_night 4
    books_ok
    # inc-4 holds every allocated cluster of the disk itself
    [ "$(qemu-img map -U --output=json bk/inc-000004.qcow2 | jq '[.[] | select(.depth > 0 and .data)] | length')" = 0 ] ||
        fail "inc-4 reads data from below: $(qemu-img map -U bk/inc-000004.qcow2)"
    qemu-img info -U --output=json "$DISK" | jq -e '."format-specific".data.bitmaps[0].flags == ["auto"]' >/dev/null ||
        fail "the bitmap is not consistent again: $(qemu-img info "$DISK")"
    nights 5 6
    [ "$(qemu-img map -U --output=json bk/inc-000006.qcow2 | jq '[.[] | select(.depth == 0 and .data)] | length')" -le 3 ] ||
        fail "night 6 copied more than its writes: $(qemu-img map -U bk/inc-000006.qcow2)"
    all_checked
}

@test "live: the agent killed with -9 and restarted leaves the bitmap inconsistent: salvaged through the agent, the chain goes on" {
    live_disk
    nights 1 3
    day
    server_stop "$BATS_TEST_TMPDIR/agent.pid" KILL
    agent_start
    keep_copy 4
    run_night 4
    [ "$status" -eq 0 ] || fail "exit $status: $stderr"
    [[ $stderr == *salvaged* ]] || fail "no word of the salvage: $stderr"
    after_night 4
    books_ok
    nights 5 7
    server_stop "$BATS_TEST_TMPDIR/agent.pid"
    all_checked
    for f in vm/*.qcow2; do qemu_clean "$f"; done
}

@test "usage: bad arguments exit 64; an image that is not there, an old --stamp and a running VM's image exit 1 and change nothing" {
    offline_disk
    local a
    for a in "" "--keep 0 $DISK bk" "--keep x $DISK bk" "--stamp a/b $DISK bk" "--bogus $DISK bk" "$DISK" "$DISK bk extra"; do
        # shellcheck disable=SC2086
        run --separate-stderr "$SCRIPT" $a
        [ "$status" -eq 64 ] || fail "'$a' exited $status"
        [ -n "$stderr" ] || fail "'$a': no message"
    done
    run --separate-stderr "$SCRIPT" --help
    [ "$status" -eq 0 ] && [[ $output == *--keep* ]] || fail "--help: $status $output"
    run --separate-stderr "$SCRIPT" nosuch.qcow2 bk
    [ "$status" -eq 1 ] && [[ $stderr == *nosuch.qcow2* ]] || fail "a missing image: $status $stderr"
    nights 1 2
    run_night 1
    [ "$status" -eq 1 ] && [[ $stderr == *newest* ]] || fail "an older stamp: $status $stderr"
    books_ok
    # a VM (qemu-nbd) holds the image: refused, nothing left behind
    nbd_serve vm -t -f qcow2 "$DISK"
    run_night 3
    [ "$status" -ne 0 ] || fail "a held image was backed up"
    server_stop "$NBD_PIDFILE"
    books_ok
    # the cron line's environment: PATH=/usr/bin:/bin, another folder
    day
    keep_copy 3
    run --separate-stderr env -i PATH=/usr/bin:/bin BLOCKCTL="$PROG" "$SCRIPT" --keep "$KEEP" --stamp 000003 "$DISK" "$PWD/bk"
    [ "$status" -eq 0 ] || fail "under cron's PATH: $status $stderr"
    after_night 3
    books_ok
}

@test "dist units: systemd-analyze verify finds blockctl-backup@.service and .timer clean; the service runs the script with absolute paths" {
    requires_cmd systemd-analyze
    local d=$BATS_TEST_TMPDIR/units dist
    dist=$(dirname "$SCRIPT")
    mkdir "$d"
    grep -qx 'ExecStart=/usr/local/bin/blockctl-backup $BACKUP_ARGS' "$dist/blockctl-backup@.service" ||
        fail "ExecStart: $(grep ExecStart "$dist/blockctl-backup@.service")"
    grep -qx 'Environment=BLOCKCTL=/usr/local/bin/blockctl' "$dist/blockctl-backup@.service" || fail "no BLOCKCTL"
    grep -q '^BLOCKCTL=${BLOCKCTL:-/usr/local/bin/blockctl}$' "$SCRIPT" || fail "the script's blockctl path"
    sed "s|/usr/local/bin/blockctl-backup|$SCRIPT|; s|/usr/local/bin/blockctl|$PROG|" \
        "$dist/blockctl-backup@.service" >"$d/blockctl-backup@t.service"
    cp "$dist/blockctl-backup@.timer" "$d/blockctl-backup@t.timer"
    run --separate-stderr timeout 60 systemd-analyze verify --man=no "$d/blockctl-backup@t.service" "$d/blockctl-backup@t.timer"
    [ "$status" -eq 0 ] && [ -z "$stderr$output" ] || fail "systemd-analyze verify: $status $output $stderr"
}
