#!/usr/bin/env bats
# -t/-T cache modes (none, writeback, writethrough, directsync, unsafe) in
# every command that takes them, checked with qemu-img: what is written
# reads as it should and passes qemu-img check, whatever the mode; none
# and directsync really use O_DIRECT (requests through lib/io.c's bounce
# buffer are counted: some with O_DIRECT, none without), writethrough
# syncs each write, unsafe syncs nothing; a filesystem that refuses
# O_DIRECT (ramfs, mounted here when root) is one line naming the file
# with qemu-img's exit status.  /tmp must be a filesystem that takes
# O_DIRECT (ext4, xfs...), as on the machines this runs on.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

MODES="none writeback writethrough directsync unsafe"

setup_file() {
    requires_qemu
    cd "$BATS_FILE_TMPDIR" || return 1
    mkq base.qcow2 8M
    qio base.qcow2 'write -P 1 0 3M' 'write -P 2 5M 1M'
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 src.qcow2
    qio src.qcow2 'write -P 3 1M 1M' 'write -P 4 60001 3000' 'write -z 7M 64k'
    to_raw src.qcow2 src.raw
    # a raw image whose size is no multiple of 512 or 4096
    qemu-img create -q -f raw odd.raw 1000001
    QIO_FMT=raw qio odd.raw 'write -P 5 0 1000001'
}

setup() {
    requires_qemu
    cd "$BATS_TEST_TMPDIR" || return 1
    S=$BATS_FILE_TMPDIR
}

# counted NAME CMD...: run CMD with BLOCKCTL_FAULT_COUNT, leaving the
# counts in NAME.cnt; $status is CMD's
counted() {
    local name=$1
    shift
    rm -f "$name.cnt"
    run --separate-stderr env BLOCKCTL_FAULT_COUNT="$PWD/$name.cnt" "$@"
}

# count NAME OP: the count of OP in NAME.cnt
count() {
    awk -v op="$2" '$1 == op { print $2 }' "$1.cnt"
}

@test "convert and mirror: every -t and -T mode writes a target that reads as the source" {
    local t T cmd
    for cmd in convert mirror; do
        for t in $MODES; do
            for T in none writeback; do
                rm -f o.qcow2
                counted c "$PROG" $cmd -t $t -T $T -O qcow2 "$S/src.qcow2" o.qcow2
                [ "$status" -eq 0 ] || fail "$cmd -t $t -T $T: exit $status: $stderr"
                qemu_same -F raw o.qcow2 "$S/src.raw"
                qemu_clean o.qcow2
                case $t$T in
                none* | directsync* | *none)
                    [ "$(count c bounced)" -gt 0 ] ||
                        fail "$cmd -t $t -T $T: no request went through O_DIRECT's bounce buffer" ;;
                *)
                    [ "$(count c bounced)" -eq 0 ] ||
                        fail "$cmd -t $t -T $T: $(count c bounced) bounced without O_DIRECT" ;;
                esac
            done
        done
    done
}

@test "writethrough and directsync sync each write, unsafe none, writeback at the end" {
    local t
    declare -A syncs
    for t in $MODES; do
        rm -f o.qcow2
        counted c "$PROG" convert -t $t -O qcow2 "$S/src.qcow2" o.qcow2
        [ "$status" -eq 0 ] || fail "convert -t $t: $stderr"
        syncs[$t]=$(count c sync)
        qemu_same -F raw o.qcow2 "$S/src.raw"
    done
    [ "${syncs[writethrough]}" -gt $((${syncs[writeback]} + 3)) ] ||
        fail "writethrough ${syncs[writethrough]} syncs, writeback ${syncs[writeback]}"
    [ "${syncs[directsync]}" -gt $((${syncs[none]} + 3)) ] ||
        fail "directsync ${syncs[directsync]} syncs, none ${syncs[none]}"
    [ "${syncs[unsafe]}" -lt "${syncs[writeback]}" ] ||
        fail "unsafe ${syncs[unsafe]} syncs, writeback ${syncs[writeback]}"
}

@test "O_DIRECT and a raw image of 1000001 bytes: the same output as qemu-img convert" {
    qemu-img convert -f raw -O raw "$S/odd.raw" q.raw
    run -0 "$PROG" convert -t none -T none -f raw -O raw "$S/odd.raw" b.raw
    [ "$(fsize b.raw)" = "$(fsize q.raw)" ] || fail "size $(fsize b.raw), qemu-img's $(fsize q.raw)"
    cmp b.raw q.raw
    # written in place over an existing one (-n): the same
    qemu-img create -q -f raw n.raw 1000448
    run -0 "$PROG" convert -n -t directsync -f raw -O raw "$S/odd.raw" n.raw
    cmp n.raw q.raw
}

@test "stream, commit -b, rebase, amend, resize, check, compare with O_DIRECT" {
    cp "$S/base.qcow2" "$S/src.qcow2" .
    run -0 "$PROG" stream -t none -T none src.qcow2
    qemu_same -F raw src.qcow2 "$S/src.raw"
    qemu_clean src.qcow2

    cp "$S/base.qcow2" "$S/src.qcow2" .
    qemu-img create -q -f qcow2 -b src.qcow2 -F qcow2 top.qcow2
    qio top.qcow2 'write -P 9 2M 64k'
    to_raw top.qcow2 want.raw
    run -0 "$PROG" commit -t directsync -b base.qcow2 top.qcow2
    qemu_same -F raw top.qcow2 want.raw
    qemu_same -f qcow2 -F raw base.qcow2 want.raw
    qemu_clean base.qcow2

    cp "$S/base.qcow2" "$S/src.qcow2" .
    mkq empty.qcow2 8M
    run -0 "$PROG" rebase -t none -T none -F qcow2 -b empty.qcow2 src.qcow2
    qemu_same -F raw src.qcow2 "$S/src.raw"
    qemu_clean src.qcow2

    run -0 "$PROG" amend -t none -o compat=0.10 src.qcow2
    qemu_clean src.qcow2
    run -0 "$PROG" resize -t none src.qcow2 16M
    qemu-img info src.qcow2 | grep -q '(16777216 bytes)'
    qemu_clean src.qcow2

    run -0 "$PROG" check -T directsync src.qcow2
    run -0 "$PROG" compare -T none src.qcow2 src.qcow2
}

@test "a filesystem refusing O_DIRECT: one line naming the file, qemu-img's exit status" {
    [ "$(id -u)" -eq 0 ] || skip "mounting ramfs needs root"
    mkdir rfs
    mount -t ramfs ramfs rfs || skip "cannot mount ramfs here"
    cp "$S/src.qcow2" "$S/base.qcow2" rfs/
    local rc=0 args
    while IFS= read -r args; do
        rc=0
        # shellcheck disable=SC2086
        qemu-img $args >/dev/null 2>&1 || rc=$?
        rm -f rfs/out.raw out.raw     # (qemu-img creates the target before it fails)
        # shellcheck disable=SC2086
        run --separate-stderr "$PROG" $args
        [ "$status" -eq "$rc" ] || { umount rfs; fail "blockctl $args: exit $status, qemu-img's $rc"; }
        [ "${#stderr_lines[@]}" -eq 1 ] &&
            [[ $stderr == "blockctl: cannot open 'rfs/"*"': filesystem does not support O_DIRECT" ]] ||
            { umount rfs; fail "blockctl $args: $stderr"; }
    done <<'EOF'
convert -t none -O raw rfs/src.qcow2 rfs/out.raw
convert -T none -O raw rfs/src.qcow2 out.raw
check -T none rfs/src.qcow2
compare -T none rfs/src.qcow2 rfs/base.qcow2
commit -t none rfs/src.qcow2
rebase -t none -u -b base.qcow2 -F qcow2 rfs/src.qcow2
EOF
    [ ! -e rfs/out.raw ] && [ ! -e rfs/out.raw.part ] || { umount rfs; fail "a target was left"; }
    umount rfs
}

@test "tmpfs: refused as ramfs where the kernel refuses O_DIRECT there, else used" {
    local d
    d=$(mktemp -d /dev/shm/blockctl-cache.XXXXXX) || skip "no /dev/shm"
    cp "$S/src.qcow2" "$S/base.qcow2" "$d/"
    if python3 -c "import os,sys; os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT))" \
        "$d/src.qcow2" 2>/dev/null; then
        run -0 "$PROG" convert -t none -T none -O qcow2 "$d/src.qcow2" "$d/o.qcow2"
        qemu_same -F raw "$d/o.qcow2" "$S/src.raw"
    else
        run -1 --separate-stderr "$PROG" convert -T none -O raw "$d/src.qcow2" out.raw
        [[ $stderr == *"'$d/src.qcow2': filesystem does not support O_DIRECT" ]] || fail "$stderr"
    fi
    rm -rf "$d"
}

@test "-q on every command: nothing on stdout" {
    cp "$S/src.qcow2" "$S/base.qcow2" .
    local args
    while IFS= read -r args; do
        # shellcheck disable=SC2086
        run --separate-stderr "$PROG" $args
        [ "$status" -eq 0 ] || fail "blockctl $args: exit $status: $stderr"
        [ -z "$output" ] || fail "blockctl $args printed: $output"
    done <<'EOF'
info -q src.qcow2
info -q --output=json src.qcow2
map -q src.qcow2
measure -q -O qcow2 src.qcow2
check -q --output=json src.qcow2
compare -q src.qcow2 src.qcow2
bitmap -q --list src.qcow2
snapshot -q -l src.qcow2
create -q -f qcow2 new.qcow2 1M
resize -q new.qcow2 2M
amend -q -p -o lazy_refcounts=on new.qcow2
convert -q -p -O raw src.qcow2 c.raw
mirror -q --progress=json src.qcow2 m.qcow2
rebase -q -p -u -b base.qcow2 -F qcow2 src.qcow2
stream -q --progress=json src.qcow2
job -q list
EOF
}
