#!/usr/bin/env bats
# Job journals of the offline jobs (stream, commit, mirror, snapshot, bitmap
# transactions): a job killed at points spread over its run (the Nth write
# through the fault layer) is listed by `job list` with its authoritative image, named by `info`,
# finished by `job resume` (the result as qemu-img says it should be, the
# copy started where the journal says it got, at most the rest copied) or
# rolled back by `job abort` (the chain as before).
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
    export BLOCKCTL_STATE_DIR=$BATS_TEST_TMPDIR/state
    # a checkpoint at every look of the copy (every 200 ms or window)
    export BLOCKCTL_CHECKPOINT_SECS=0
}

# base (data 0x11 over 0-40M), mid (0x22 over 30-100M), top (0x33 at 60M)
make_chain() {
    qemu-img create -q -f qcow2 base.qcow2 128M
    qemu-io -f qcow2 -c "write -P 0x11 0 40M" base.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
    qemu-io -f qcow2 -c "write -P 0x22 30M 70M" -c "write -z 110M 1M" mid.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
    qemu-io -f qcow2 -c "write -P 0x33 60M 2M" top.qcow2 >/dev/null
    qemu-img convert -O raw top.qcow2 view.raw
}

# journals: how many journals the state folder holds
journals() {
    local n=0 f
    for f in "$BLOCKCTL_STATE_DIR"/jobs/*.json; do
        [ -e "$f" ] && n=$((n + 1))
    done
    echo "$n"
}

# the one journal's id
jid() {
    local f
    f=$(ls "$BLOCKCTL_STATE_DIR"/jobs/*.json)
    basename "$f" .json
}

# writes GLOB CMD...: how many pwrite calls CMD makes on files matching GLOB
writes() {
    local glob=$1 cnt=$BATS_TEST_TMPDIR/count
    shift
    rm -f "$cnt"
    BLOCKCTL_FAULT_COUNT=$cnt "$@" >/dev/null 2>&1 || return 1
    # (counted for every file: the kill points spread over all of them)
    awk '$1 == "pwrite" { print $2 }' "$cnt"
}

# calls CMD...: how many I/O calls of any kind CMD makes
calls() {
    local cnt=$BATS_TEST_TMPDIR/count
    rm -f "$cnt"
    BLOCKCTL_FAULT_COUNT=$cnt "$@" >/dev/null 2>&1 || return 1
    awk '$1 == "any" { print $2 }' "$cnt"
}

# killed_at N CMD...: run CMD killed at its Nth pwrite; true when it was killed
killed_at() {
    local n=$1
    shift
    run -137 env BLOCKCTL_FAULT="pwrite:$n:kill" "$@"
}

# resume_checked: resume the one interrupted job; check that the copy
# started where the journal said and copied at most the rest
resume_checked() {
    local id copied total from bytes
    id=$(jid)
    copied=$(jq .copied "$BLOCKCTL_STATE_DIR/jobs/$id.json")
    total=$(jq .total "$BLOCKCTL_STATE_DIR/jobs/$id.json")
    run -0 --separate-stderr "$PROG" job resume "$id"
    [[ $stderr == *"resuming"*"$id"* ]] || fail "resume said: $stderr"
    if [[ $stderr =~ copied\ ([0-9]+)\ bytes\ from\ offset\ ([0-9]+) ]]; then
        bytes=${BASH_REMATCH[1]} from=${BASH_REMATCH[2]}
        [ "$from" = "$copied" ] || fail "resumed at $from, journal said $copied"
        [ "$bytes" -le $((total - copied)) ] ||
            fail "resume copied $bytes bytes, more than the $((total - copied)) left"
    fi
    [ "$(journals)" = 0 ] || fail "a journal is left after resume"
}

@test "mirror killed at points over its run: listed with its source as authoritative, info says so, resume finishes it" {
    make_chain
    local n k p tried=0
    n=$(writes '*' "$PROG" mirror --buf-size 1M --requests 1 top.qcow2 probe.qcow2)
    rm -f probe.qcow2
    [ "$n" -gt 20 ]
    for k in 1 2 3 4 5 6 7; do
        p=$((n * k / 8))
        rm -f t.qcow2 t.qcow2.part
        killed_at "$p" "$PROG" mirror --buf-size 1M --requests 1 top.qcow2 t.qcow2
        [ ! -e t.qcow2 ] || fail "a killed mirror left TARGET at point $p"
        if [ "$(journals)" = 0 ]; then
            continue    # (killed before its journal was written: nothing changed)
        fi
        tried=$((tried + 1))
        run -0 "$PROG" job list --output=json
        [ "$(jq -r '.[0].type' <<<"$output")" = mirror ]
        [ "$(jq -r '.[0].authoritative' <<<"$output")" = "$PWD/top.qcow2" ]
        [ "$(jq -r '.[0].running' <<<"$output")" = false ]
        run -0 --separate-stderr "$PROG" info top.qcow2
        [[ $stderr == *"interrupted mirror job $(jid)"* ]] || fail "info said: $stderr"
        qemu-img compare view.raw top.qcow2 >/dev/null
        resume_checked
        qemu-img check -q t.qcow2
        qemu-img compare top.qcow2 t.qcow2 >/dev/null || fail "wrong copy after resume at $p"
        [ ! -e t.qcow2.part ]
    done
    [ "$tried" -ge 5 ]
}

@test "mirror -n killed: resume finishes the existing target; abort says it is incomplete" {
    make_chain
    local n
    qemu-img create -q -f qcow2 t.qcow2 128M
    n=$(writes '*' "$PROG" mirror -n --buf-size 1M --requests 1 top.qcow2 t.qcow2)
    for what in resume abort; do
        qemu-img create -q -f qcow2 t.qcow2 128M
        killed_at $((n / 2)) "$PROG" mirror -n --buf-size 1M --requests 1 top.qcow2 t.qcow2
        [ "$(journals)" = 1 ]
        run -0 "$PROG" job show "$(jid)"
        [[ $output == *"step:          copying"* ]]
        if [ $what = resume ]; then
            resume_checked
            qemu-img compare top.qcow2 t.qcow2 >/dev/null
        else
            run -0 "$PROG" job abort "$(jid)"
            [[ $output == *"t.qcow2' is incomplete"* ]]
            [[ $output == *"'$PWD/top.qcow2' holds the disk"* ]]
            [ "$(journals)" = 0 ]
        fi
        qemu-img check -q t.qcow2
    done
}

@test "mirror killed while TARGET.part is renamed into place: resume installs it" {
    make_chain
    run -137 env BLOCKCTL_FAULT='rename:1:kill:t.qcow2' "$PROG" mirror top.qcow2 t.qcow2
    [ -e t.qcow2.part ] && [ ! -e t.qcow2 ]
    run -0 "$PROG" job show --output=json "$(jid)"
    [ "$(jq -r .state <<<"$output")" = installing ]
    resume_checked
    [ ! -e t.qcow2.part ]
    qemu-img compare top.qcow2 t.qcow2 >/dev/null
}

@test "mirror job abort removes the incomplete TARGET.part and leaves the source as it was" {
    make_chain
    local n
    n=$(writes '*' "$PROG" mirror --buf-size 1M --requests 1 top.qcow2 probe.qcow2)
    killed_at $((n / 2)) "$PROG" mirror --buf-size 1M --requests 1 top.qcow2 t.qcow2
    [ -e t.qcow2.part ]
    run -0 "$PROG" job abort "$(jid)"
    [[ $output == *"Removed the incomplete copy '$PWD/t.qcow2.part'"* ]]
    [ ! -e t.qcow2.part ] && [ ! -e t.qcow2 ]
    [ "$(journals)" = 0 ]
    qemu-img compare view.raw top.qcow2 >/dev/null
    run -1 "$PROG" job resume mirror
    [[ $output == *"no interrupted job 'mirror'"* ]]
}

@test "stream and stream --base killed at points over their run: the chain reads as before; resume finishes it" {
    local n k p tried=0 args
    for args in "" "--base base.qcow2"; do
        make_chain
        cp top.qcow2 top.orig
        # shellcheck disable=SC2086
        n=$(writes '*' "$PROG" stream $args --buf-size 1M --requests 1 top.qcow2)
        for k in 1 3 5 7; do
            cp top.orig top.qcow2
            p=$((n * k / 8))
            # shellcheck disable=SC2086
            killed_at "$p" "$PROG" stream $args --buf-size 1M --requests 1 top.qcow2
            qemu-img compare view.raw top.qcow2 >/dev/null || fail "killed at $p: the view changed"
            qemu-img check -q top.qcow2 || [ $? = 3 ]
            [ "$(journals)" = 1 ] || continue
            tried=$((tried + 1))
            run -0 "$PROG" job list --output=json
            [ "$(jq -r '.[0].authoritative' <<<"$output")" = "$PWD/top.qcow2" ]
            resume_checked
            qemu-img compare view.raw top.qcow2 >/dev/null
            if [ -n "$args" ]; then
                [ "$(qemu-img info --output=json top.qcow2 | jq -r '."backing-filename"')" = base.qcow2 ]
            else
                [ "$(qemu-img info --output=json top.qcow2 | jq -r '."backing-filename"')" = null ]
            fi
        done
    done
    [ "$tried" -ge 6 ]
}

@test "stream killed while relinking: resume writes the link; abort leaves a chain that reads as before" {
    local n
    # (no checkpoints: with several requests in flight their number, and so
    # the count of writes, would vary from run to run)
    export BLOCKCTL_CHECKPOINT_SECS=60
    make_chain
    cp top.qcow2 top.orig
    n=$(writes '*' "$PROG" stream --base base.qcow2 top.qcow2)
    for what in resume abort; do
        cp top.orig top.qcow2
        # the last write is the header's new backing link
        killed_at "$n" "$PROG" stream --base base.qcow2 top.qcow2
        run -0 "$PROG" job show --output=json "$(jid)"
        [ "$(jq -r .state <<<"$output")" = relinking ]
        if [ $what = resume ]; then
            resume_checked
            [ "$(qemu-img info --output=json top.qcow2 | jq -r '."backing-filename"')" = base.qcow2 ]
        else
            run -0 "$PROG" job abort "$(jid)"
            [ "$(journals)" = 0 ]
        fi
        qemu-img check -q top.qcow2
        qemu-img compare view.raw top.qcow2 >/dev/null
    done
}

@test "commit --top killed at points over its run: resume finishes it (the relink and the emptying too)" {
    local n k p tried=0
    make_chain
    cp base.qcow2 base.orig
    cp mid.qcow2 mid.orig
    cp top.qcow2 top.orig
    n=$(writes '*' "$PROG" commit --top mid.qcow2 --buf-size 1M --requests 1 top.qcow2)
    for k in 1 3 5 7 8; do
        cp base.orig base.qcow2
        cp mid.orig mid.qcow2
        cp top.orig top.qcow2
        p=$((n * k / 8))
        killed_at "$p" "$PROG" commit --top mid.qcow2 --buf-size 1M --requests 1 top.qcow2
        qemu-img compare view.raw top.qcow2 >/dev/null || fail "killed at $p: the view changed"
        [ "$(journals)" = 1 ] || continue
        tried=$((tried + 1))
        run -0 "$PROG" job list --output=json
        [ "$(jq -r '.[0].type' <<<"$output")" = commit ]
        [ "$(jq -r '.[0].authoritative' <<<"$output")" = "$PWD/top.qcow2" ]
        resume_checked
        qemu-img compare view.raw top.qcow2 >/dev/null
        [ "$(qemu-img info --output=json top.qcow2 | jq -r '."backing-filename"')" = base.qcow2 ]
        for i in base top; do
            qemu-img check -q $i.qcow2
        done
    done
    [ "$tried" -ge 4 ]
}

@test "commit killed then aborted: the chain reads as before" {
    make_chain
    local n
    n=$(writes '*' "$PROG" commit --buf-size 1M --requests 1 top.qcow2)
    make_chain
    killed_at $((n / 2)) "$PROG" commit --buf-size 1M --requests 1 top.qcow2
    [ "$(journals)" = 1 ]
    run -0 "$PROG" job abort "$(jid)"
    [[ $output == *"'$PWD/top.qcow2' holds the disk"* ]]
    [ "$(journals)" = 0 ]
    qemu-img compare view.raw top.qcow2 >/dev/null
}

@test "resume refuses when the source was replaced meanwhile; abort still ends the job" {
    make_chain
    local n
    n=$(writes '*' "$PROG" mirror --buf-size 1M --requests 1 top.qcow2 probe.qcow2)
    killed_at $((n / 2)) "$PROG" mirror --buf-size 1M --requests 1 top.qcow2 t.qcow2
    cp top.qcow2 top.new && mv top.new top.qcow2     # (another inode)
    run -1 "$PROG" job resume "$(jid)"
    [[ $output == *"is not the image job"*"was using (its inode changed)"* ]]
    [ "$(journals)" = 1 ]
    [ -e t.qcow2.part ]
    run -0 "$PROG" job abort "$(jid)"
    [ ! -e t.qcow2.part ]
}

@test "a state folder that cannot be written: an error naming it, before anything changes" {
    make_chain
    mkdir ro && chmod 0500 ro
    if [ "$(id -u)" = 0 ]; then
        # (root writes anywhere: a file where the folder would be)
        touch notadir
        export BLOCKCTL_STATE_DIR=$PWD/notadir/state
    else
        export BLOCKCTL_STATE_DIR=$PWD/ro/state
    fi
    run -1 "$PROG" mirror top.qcow2 t.qcow2
    [[ $output == *"cannot keep a job journal in '$BLOCKCTL_STATE_DIR/jobs'"* ]]
    [ ! -e t.qcow2 ] && [ ! -e t.qcow2.part ]
    cp top.qcow2 top.orig
    run -1 "$PROG" stream top.qcow2
    [[ $output == *"cannot keep a job journal"* ]]
    cmp top.qcow2 top.orig
    run -0 "$PROG" mirror --state-dir "$BATS_TEST_TMPDIR/ok" top.qcow2 t.qcow2
    qemu-img compare top.qcow2 t.qcow2 >/dev/null
}

@test "a job still running is listed as running; resume and abort refuse it" {
    make_chain
    "$PROG" mirror --bandwidth 8M top.qcow2 t.qcow2 2>/dev/null &
    local pid=$! i
    for i in $(seq 100); do
        [ "$(journals)" = 1 ] && break
        sleep 0.05
    done
    run -0 "$PROG" job list
    [[ $output == *"mirror "*"running"* ]]
    run -1 "$PROG" job resume "$(jid)"
    [[ $output == *"is running (process $pid)"* ]]
    run -1 "$PROG" job abort "$(jid)"
    kill -TERM $pid
    wait $pid || true
    [ "$(journals)" = 0 ]     # (interrupted by a signal: rolled back)
    [ ! -e t.qcow2.part ]
}

@test "a journal whose process number now belongs to another process (started later) is interrupted, not running" {
    make_chain
    killed_at 20 "$PROG" mirror top.qcow2 t.qcow2
    local f pid start
    f=$(ls "$BLOCKCTL_STATE_DIR"/jobs/*.json)
    [ "$(jq '."pid-start" > 0' "$f")" = true ] || fail "no start time: $(cat "$f")"
    # a live process that looks like blockctl, under the journal's number
    bash -c 'exec -a blockctl-other sleep 60' &
    pid=$!
    start=$(awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$pid/stat")
    jq --argjson p "$pid" --argjson s "$start" '.pid = $p | ."pid-start" = $s' "$f" >j.tmp && mv j.tmp "$f"
    run -0 "$PROG" job list --output=json
    [ "$(jq -r '.[0].running' <<<"$output")" = true ] || fail "$output"
    # the same number, started at another time: the journal's process is gone
    jq --argjson s "$((start + 1))" '."pid-start" = $s' "$f" >j.tmp && mv j.tmp "$f"
    run -0 "$PROG" job list --output=json
    [ "$(jq -r '.[0].running' <<<"$output")" = false ] || fail "$output"
    kill "$pid"
    wait "$pid" || true
    # then job resume finishes it
    resume_checked
    qemu-img compare top.qcow2 t.qcow2 >/dev/null
}

@test "job list and show: no jobs; an ambiguous or unknown ID; --output=json" {
    run -0 "$PROG" job list
    [ "$output" = "No interrupted jobs" ]
    run -0 "$PROG" job list --output=json
    [ "$(jq length <<<"$output")" = 0 ]
    run -1 "$PROG" job show nosuchjob
    [[ $output == *"no interrupted job 'nosuchjob'"* ]]
    make_chain
    local n
    n=$(writes '*' "$PROG" mirror --buf-size 1M --requests 1 top.qcow2 probe.qcow2)
    killed_at $((n / 2)) "$PROG" mirror --buf-size 1M --requests 1 top.qcow2 a.qcow2
    killed_at $((n / 2)) "$PROG" mirror --buf-size 1M --requests 1 top.qcow2 b.qcow2
    run -1 "$PROG" job resume mirror-
    [[ $output == *"names 2 interrupted jobs"* ]]
    run -0 "$PROG" job list --output=json
    [ "$(jq length <<<"$output")" = 2 ]
    [ "$(jq -r '[.[].images.part.path] | sort | join(" ")' <<<"$output")" = "$PWD/a.qcow2.part $PWD/b.qcow2.part" ]
    run -64 "$PROG" job abort
    run -64 "$PROG" job --agent /nonexistent.sock abort x
}

# three disks for snapshot: a qcow2 chain's top, a raw image, a qcow2 with a bitmap
make_disks() {
    qemu-img create -q -f qcow2 b1.qcow2 16M
    qemu-io -f qcow2 -c "write -P 0x41 0 2M" b1.qcow2 >/dev/null
    qemu-img create -q -f qcow2 -b b1.qcow2 -F qcow2 d1.qcow2
    qemu-io -f qcow2 -c "write -P 0x42 1M 1M" d1.qcow2 >/dev/null
    qemu-img create -q -f raw d2.raw 16M
    qemu-io -f raw -c "write -P 0x43 4M 1M" d2.raw >/dev/null
    qemu-img create -q -f qcow2 d3.qcow2 16M
    qemu-img bitmap --add d3.qcow2 db
    qemu-io -f qcow2 -c "write -P 0x44 8M 64k" d3.qcow2 >/dev/null
    for f in d1.qcow2 d2.raw d3.qcow2; do cp "$f" "$f.orig"; done
}

SNAP3=(snapshot d1.qcow2 s1.qcow2 d2.raw s2.raw.qcow2 d3.qcow2 s3.qcow2)

@test "snapshot of 3 disks killed at points over its run: job list names it and the images; resume makes every overlay, abort none" {
    make_disks
    local n k p tried=0 what id f
    n=$(writes '*' "$PROG" "${SNAP3[@]}")
    rm -f s1.qcow2 s2.raw.qcow2 s3.qcow2
    [ "$n" -gt 6 ]
    for k in 1 2 3 4 5 6 7 8 9; do
        p=$((n * k / 10))
        [ "$p" -gt 0 ] || continue
        rm -f s1.qcow2 s2.raw.qcow2 s3.qcow2 .blockctl-new.*
        killed_at "$p" "$PROG" "${SNAP3[@]}"
        [ "$(journals)" = 1 ] || continue
        tried=$((tried + 1))
        id=$(jid)
        run -0 "$PROG" job list --output=json
        [ "$(jq -r '.[0].type' <<<"$output")" = snapshot ]
        [ "$(jq -r '.[0].running' <<<"$output")" = false ]
        [ "$(jq -r '.[0].authoritative' <<<"$output")" = "$PWD/d1.qcow2, $PWD/d2.raw, $PWD/d3.qcow2" ]
        [ "$(jq -r '.[0].images["overlay-3"].path' <<<"$output")" = "$PWD/s3.qcow2" ]
        run -0 --separate-stderr "$PROG" info d2.raw
        [[ $stderr == *"interrupted snapshot job $id"*"hold the disks"* ]] || fail "info said: $stderr"
        for f in d1.qcow2 d2.raw d3.qcow2; do cmp "$f" "$f.orig"; done
        if [ $((k % 2)) = 1 ]; then
            what=resume
            run -0 "$PROG" job resume "$id"
            for f in s1.qcow2 s2.raw.qcow2 s3.qcow2; do qemu-img check -q "$f"; done
            [ "$(qemu-img info --output=json s1.qcow2 | jq -r '."backing-filename"')" = d1.qcow2 ]
            [ "$(qemu-img info --output=json --backing-chain s1.qcow2 | jq -r '.[2].filename')" = b1.qcow2 ]
            [ "$(qemu-img info --output=json s2.raw.qcow2 | jq -r '."backing-filename-format"')" = raw ]
            qemu-img compare s1.qcow2 d1.qcow2 >/dev/null
            qemu-img compare s2.raw.qcow2 d2.raw >/dev/null
            qemu-img compare s3.qcow2 d3.qcow2 >/dev/null
            # (the enabled bitmap follows to the overlay, as without a crash)
            [ "$(qemu-img info --output=json s3.qcow2 | jq -r '."format-specific".data.bitmaps[0].name')" = db ]
        else
            what=abort
            run -0 "$PROG" job abort "$id"
            [[ $output == *"'$PWD/d1.qcow2, $PWD/d2.raw, $PWD/d3.qcow2' hold the disks"* ]]
            [ ! -e s1.qcow2 ] && [ ! -e s2.raw.qcow2 ] && [ ! -e s3.qcow2 ] ||
                fail "abort at $p left an overlay: $(ls)"
        fi
        [ -z "$(ls -A | grep '^\.blockctl-new')" ] || fail "$what at $p left a hidden file: $(ls -A)"
        [ "$(journals)" = 0 ] || fail "$what at $p left a journal"
        for f in d1.qcow2 d2.raw d3.qcow2; do cmp "$f" "$f.orig"; done
    done
    [ "$tried" -ge 5 ]
}

@test "snapshot: job resume killed in turn is resumed again; abort removes only the overlays it made" {
    make_disks
    local n m id
    n=$(writes '*' "$PROG" "${SNAP3[@]}")
    rm -f s1.qcow2 s2.raw.qcow2 s3.qcow2
    killed_at $((n / 3)) "$PROG" "${SNAP3[@]}"
    [ "$(journals)" = 1 ]
    id=$(jid)
    # the resume killed at its first write: the same job, still to finish
    killed_at 1 "$PROG" job resume "$id"
    [ "$(journals)" = 1 ] && [ "$(jid)" = "$id" ]
    run -0 "$PROG" job resume "$id"
    qemu-img compare s3.qcow2 d3.qcow2 >/dev/null
    rm -f s1.qcow2 s2.raw.qcow2 s3.qcow2
    # an overlay replaced after the crash is not the job's: abort leaves it
    m=$(writes '*' "$PROG" "${SNAP3[@]}")
    rm -f s1.qcow2 s2.raw.qcow2 s3.qcow2
    killed_at $((m * 9 / 10)) "$PROG" "${SNAP3[@]}"
    [ -e s1.qcow2 ] || skip "killed before the first overlay was made"
    id=$(jid)
    qemu-img create -q -f qcow2 s1.new 16M && mv s1.new s1.qcow2
    run -1 "$PROG" job resume "$id"
    [[ $output == *"is not the image job"* ]]
    run -0 "$PROG" job abort "$id"
    [ -e s1.qcow2 ]
    [ "$(qemu-img info --output=json s1.qcow2 | jq -r '."backing-filename"')" = null ]
}

# d.qcow2 with bitmaps a (enabled), b (disabled), c; o.qcow2 with bitmap x
make_bitmaps() {
    qemu-img create -q -f qcow2 d.qcow2 64M
    qemu-img bitmap --add d.qcow2 a
    qemu-img bitmap --add d.qcow2 b
    qemu-img bitmap --add -g 16k d.qcow2 c
    qemu-io -f qcow2 -c "write -P 0x51 0 3M" -c "write -P 0x52 20M 1M" d.qcow2 >/dev/null
    qemu-img bitmap --disable d.qcow2 b
    qemu-io -f qcow2 -c "write -P 0x53 40M 64k" d.qcow2 >/dev/null
    qemu-img create -q -f qcow2 o.qcow2 64M
    qemu-img bitmap --add o.qcow2 x
    qemu-io -f qcow2 -c "write -P 0x54 50M 2M" o.qcow2 >/dev/null
}

# bmstate IMG: its bitmaps (name, granularity, flags) and their dirty ranges, as QEMU sees them
bmstate() {
    local names
    qemu-img info --output=json "$1" | jq -c '[."format-specific".data.bitmaps[]? | [.name, .granularity, .flags]]'
    names=$(qemu-img info --output=json "$1" | jq -r '."format-specific".data.bitmaps[]?.name')
    # shellcheck disable=SC2086
    /usr/bin/python3 "$BATS_TEST_DIRNAME/../crash/bitmaps.py" "$1" $names
}

BMTX=(bitmap --add --disabled --merge=a --merge=b -g 64k d.qcow2 n)

@test "bitmap transaction killed before each I/O call: listed, and after resume or abort all of it applied or none (qemu-img, qemu-nbd)" {
    make_bitmaps
    local n p id before after now tried=0 applied=0
    cp d.qcow2 d.orig
    before=$(bmstate d.qcow2)
    n=$(calls "$PROG" "${BMTX[@]}")
    after=$(bmstate d.qcow2)
    [ "$before" != "$after" ]
    for ((p = 1; p <= n; p++)); do
        cp d.orig d.qcow2
        run -137 env BLOCKCTL_FAULT="any:$p:kill" "$PROG" "${BMTX[@]}"
        now=$(bmstate d.qcow2)
        [ "$now" = "$before" ] || [ "$now" = "$after" ] || fail "killed at $p: neither before nor after: $now"
        [ "$(journals)" = 1 ] || continue
        tried=$((tried + 1))
        id=$(jid)
        run -0 "$PROG" job show --output=json "$id"
        [ "$(jq -r .type <<<"$output")" = bitmap ]
        [ "$(jq -r .authoritative <<<"$output")" = "$PWD/d.qcow2" ]
        run -0 --separate-stderr "$PROG" info d.qcow2
        [[ $stderr == *"interrupted bitmap job $id"* ]] || fail "info said: $stderr"
        [ "$now" = "$after" ] && applied=$((applied + 1))
        if [ $((p % 2)) = 1 ]; then
            run -0 "$PROG" job resume "$id"
            [ "$(bmstate d.qcow2)" = "$after" ] || fail "resume at $p: $(bmstate d.qcow2)"
        else
            run -0 "$PROG" job abort "$id"
            if [ "$now" = "$after" ]; then
                [[ $output == *"had taken effect, all of them"* ]] || fail "abort said: $output"
            else
                [[ $output == *"None of the actions had taken effect"* ]] || fail "abort said: $output"
            fi
            [ "$(bmstate d.qcow2)" = "$now" ]
        fi
        [ "$(journals)" = 0 ]
        qemu-img check -q d.qcow2 || [ $? = 3 ] || fail "qemu-img check after $p"
    done
    [ "$tried" -ge 3 ] && [ "$applied" -ge 1 ] || fail "tried $tried, applied $applied"
}

@test "bitmap transaction with a source image: resume applies it when nothing had taken effect" {
    make_bitmaps
    local n after id
    cp d.qcow2 d.orig
    n=$(writes '*' "$PROG" bitmap --clear --disable --merge=x -b o.qcow2 -F qcow2 d.qcow2 a)
    after=$(bmstate d.qcow2)
    cp d.orig d.qcow2
    killed_at $((n / 2)) "$PROG" bitmap --clear --disable --merge=x -b o.qcow2 -F qcow2 d.qcow2 a
    [ "$(bmstate d.qcow2)" != "$after" ] || skip "killed after the switch"
    id=$(jid)
    run -0 "$PROG" job show "$id"
    [[ $output == *"source-file"*"$PWD/o.qcow2"* ]]
    run -0 "$PROG" job resume "$id"
    [ "$(bmstate d.qcow2)" = "$after" ]
    [ "$(journals)" = 0 ]
    # an image replaced meanwhile is refused, and abort still ends the job
    cp d.orig d.qcow2
    killed_at $((n / 2)) "$PROG" bitmap --clear --disable --merge=x -b o.qcow2 -F qcow2 d.qcow2 a
    cp d.qcow2 d.new && mv d.new d.qcow2
    run -1 "$PROG" job resume "$(jid)"
    [[ $output == *"is not the image job"* ]]
    run -0 "$PROG" job abort "$(jid)"
    [[ $output == *"not known"* ]]
    [ "$(journals)" = 0 ]
}
