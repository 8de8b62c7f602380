#!/usr/bin/env bats
# Malformed persistent-bitmap extensions (bitmap directories, entries,
# tables): blockctl info, bitmap --list and bitmap --dump end by themselves
# (no signal, no hang, no absurd allocation: run_guarded) and fail with a
# short error naming the file, or, where only the bitmap data is broken,
# report the problem instead of a silent wrong answer; blockctl check
# reports bitmap-table corruption as qemu-img check does, and check -r all
# repairs it so that qemu-img check is clean.  Under `make asan` PROG is the
# sanitizer build, so any memory error fails these tests too.
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
bats_require_minimum_version 1.5.0

setup_file() {
    requires_cmd qemu-img qemu-io python3 jq
    cd "$BATS_FILE_TMPDIR" || return 1
    # good.qcow2: 4M, 64k clusters, bitmaps b0 (64k) and b1 (4k), both
    # with bits set (so that their tables point at data clusters)
    mkq good.qcow2 4M
    qemu-img bitmap --add good.qcow2 b0 || return 1
    qemu-img bitmap --add -g 4096 good.qcow2 b1 || return 1
    qio good.qcow2 'write -P 1 0 64k' 'write -P 2 2M 1M' || return 1
    python3 -S - good.qcow2 <<'EOF' || return 1
import shutil, struct, sys
def rd(f, off, fmt):
    f.seek(off)
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
good = sys.argv[1]
with open(good, 'rb') as f:
    off = rd(f, 100, '>I')                      # header_length: extensions follow
    while True:
        t, l = rd(f, off, '>I'), rd(f, off + 4, '>I')
        if t == 0x23852875:
            ext = off + 8
            break
        if t == 0:
            sys.exit('no bitmaps extension')
        off += 8 + ((l + 7) & ~7)
    nb, dsz, doff = rd(f, ext, '>I'), rd(f, ext + 8, '>Q'), rd(f, ext + 16, '>Q')
    assert nb == 2, nb
    e0 = doff                                   # entry 0: b0
    e1 = e0 + ((24 + rd(f, e0 + 20, '>I') + rd(f, e0 + 18, '>H') + 7) & ~7)
    t0 = rd(f, e0, '>Q')                        # b0's bitmap table
    d0 = rd(f, t0, '>Q')                        # its first entry: a data cluster
    assert d0 > 1 and d0 % 65536 == 0, d0
    assert rd(f, e1 + 24, '>2s') == b'b1'
cs = 65536
cases = {
    # the extension header
    'nb0':          [(ext, '>I', 0)],
    'nbhuge':       [(ext, '>I', 0x7fffffff)],
    'nb1':          [(ext, '>I', 1)],                 # fewer than the directory holds
    'nb3':          [(ext, '>I', 3)],                 # more than the directory holds
    'dirsize0':     [(ext + 8, '>Q', 0)],
    'dirsizehuge':  [(ext + 8, '>Q', 0xffffffffffff)],
    'dirsizeshort': [(ext + 8, '>Q', dsz - 24)],      # cuts entry 1
    'dirsizelong':  [(ext + 8, '>Q', dsz + 8)],       # 8 bytes no entry accounts for
    'dirunal':      [(ext + 16, '>Q', doff + 4)],
    'direof':       [(ext + 16, '>Q', 0x100000000)],
    'dirwrap':      [(ext + 16, '>Q', 0xffffffffffff0000)],
    'dirzero':      [(ext + 16, '>Q', 0)],
    # directory entries
    'name0':        [(e0 + 18, '>H', 0)],
    'name2000':     [(e0 + 18, '>H', 2000)],
    'namepast':     [(e1 + 18, '>H', 100)],           # past the directory's end
    'gran8':        [(e0 + 17, '>B', 8)],
    'gran40':       [(e0 + 17, '>B', 40)],
    'gran63':       [(e0 + 17, '>B', 63)],
    'type2':        [(e0 + 16, '>B', 2)],
    'flagsres':     [(e0 + 12, '>I', 0x2 | 0x10)],    # auto + a reserved bit
    'flagsres31':   [(e0 + 12, '>I', 0x80000000)],
    'tsizewrong':   [(e0 + 8, '>I', 5)],
    'tsize0':       [(e0 + 8, '>I', 0)],
    'tsizehuge':    [(e0 + 8, '>I', 0xffffffff)],
    'toffunal':     [(e0, '>Q', t0 + 0x200)],
    'toffeof':      [(e0, '>Q', 0x100000000)],
    'toffzero':     [(e0, '>Q', 0)],
    'extrahuge':    [(e0 + 20, '>I', 0x7fffffff)],
    'extra8':       [(e1 + 20, '>I', 8)],             # extra data that runs into the name
    'dupname':      [(e1 + 25, '>B', ord('0'))],      # b1 renamed b0
    # bitmap table entries (the directory itself is fine)
    'tentryeof':    [(t0, '>Q', 0x100000000)],
    'tentryunal':   [(t0, '>Q', d0 + 0x200)],
    'tentryres':    [(t0, '>Q', d0 | 0x2)],           # reserved bits 1-8
    'tentryhdr':    [(t0, '>Q', cs)],                 # points into the refcount table's cluster
}
for name, edits in cases.items():
    shutil.copy(good, name + '.qcow2')
    with open(name + '.qcow2', 'r+b') as f:
        for o, fmt, v in edits:
            f.seek(o)
            f.write(struct.pack(fmt, v))
# the refcount of b0's data cluster: 0 (still referenced) and 2
for name, rc in (('rcdata0', 0), ('rcdata2', 2), ('rctable0', 0)):
    shutil.copy(good, name + '.qcow2')
    open(name + '.target', 'w').write(str((d0 if name.startswith('rcdata') else t0) // cs))
EOF
    local n
    for n in rcdata0 rcdata2 rctable0; do
        case $n in rcdata2) v=2 ;; *) v=0 ;; esac
        qedit "$n.qcow2" rc "$(cat "$n.target")" "$v" || return 1
    done
    "$PROG" bitmap --dump --output=json good.qcow2 b1 >good.b1.json || return 1
}

setup() {
    requires_cmd qemu-img python3 jq
    cd "$BATS_TEST_TMPDIR" || return 1
}

# use NAME: a private copy of the case, NAME.qcow2 (the name the errors must give)
use() {
    cp "$BATS_FILE_TMPDIR/$1.qcow2" "$1.qcow2"
}

# broken_directory NAME: info, --list and --dump fail cleanly naming the
# file; check ends by itself, failing or reporting errors (as qemu-img
# check, which cannot open these images either)
broken_directory() {
    local f=$1.qcow2
    use "$1"
    # QEMU finds every one of these images broken (a sanity check of the case)
    ! qemu-img check "$f" >/dev/null 2>&1 || { fail "qemu-img check finds $f fine: not a malformed case"; return 1; }
    # info fails as qemu-img info does; where qemu-img info can open the
    # image (it does not read the tables), info may succeed
    local qinfo=0
    qemu-img info "$f" >/dev/null 2>&1 || qinfo=$?
    run_guarded "$PROG" info "$f"
    assert_no_crash || { fail "info $f"; return 1; }
    if [ "$status" -ne 0 ] || [ "$qinfo" -ne 0 ]; then
        assert_clean_failure "$f" || { fail "info $f"; return 1; }
    fi
    run_guarded "$PROG" info --output=json "$f"
    assert_no_crash || { fail "info --output=json $f"; return 1; }
    if [ "$status" -ne 0 ] || [ "$qinfo" -ne 0 ]; then
        assert_clean_failure "$f" || { fail "info --output=json $f"; return 1; }
    fi
    run_guarded "$PROG" bitmap --list "$f"
    assert_clean_failure "$f" || { fail "bitmap --list $f"; return 1; }
    run_guarded "$PROG" bitmap --list --output=json "$f"
    assert_clean_failure "$f" || { fail "bitmap --list --output=json $f"; return 1; }
    run_guarded "$PROG" bitmap --dump "$f" b0
    assert_clean_failure "$f" || { fail "bitmap --dump $f b0"; return 1; }
    run_guarded "$PROG" bitmap --dump --output=json "$f" b1
    assert_clean_failure "$f" || { fail "bitmap --dump $f b1"; return 1; }
    # no action may write to such an image
    local sum
    sum=$(cksum <"$f")
    run_guarded "$PROG" bitmap --add "$f" new
    assert_clean_failure "$f" || { fail "bitmap --add $f new"; return 1; }
    run_guarded "$PROG" bitmap --remove "$f" b1
    assert_clean_failure "$f" || { fail "bitmap --remove $f b1"; return 1; }
    [ "$(cksum <"$f")" = "$sum" ] || { fail "a refused action wrote to $f"; return 1; }
    run_guarded "$PROG" check "$f"
    assert_no_crash || { fail "check $f"; return 1; }
    [ "$status" -ne 0 ] || { fail "check $f exited 0: $output"; return 1; }
}

# broken_table NAME: b0's bitmap table entry is bad: --dump b0 fails
# cleanly naming the file; info ends by itself; check reports the
# corruption (exit 2, as qemu-img check) and check -r all repairs it:
# qemu-img check is then clean, --list works, b1 is intact
broken_table() {
    local f=$1.qcow2
    use "$1"
    run_guarded "$PROG" info "$f"
    assert_no_crash || { fail "info $f"; return 1; }
    [ "$status" -eq 0 ] || assert_clean_failure "$f" || { fail "info $f"; return 1; }
    run_guarded "$PROG" bitmap --dump "$f" b0
    assert_clean_failure "$f" || { fail "bitmap --dump $f b0"; return 1; }
    run_guarded "$PROG" bitmap --list "$f"
    assert_no_crash || { fail "bitmap --list $f"; return 1; }
    check_reports_and_repairs "$f" 2
}

# list_reports NAME: --list fails cleanly naming the file, or reports b0
# as unusable (inconsistent, or a warning naming the file) rather than
# giving it a count it cannot know
list_reports() {
    local f=$1.qcow2
    use "$1"
    run_guarded "$PROG" bitmap --list --output=json "$f"
    assert_no_crash || { fail "bitmap --list $f"; return 1; }
    if [ "$status" -ne 0 ]; then
        assert_clean_failure "$f" || { fail "bitmap --list $f"; return 1; }
    elif [[ $stderr != *"$f"* ]]; then
        [ "$(jq -r '.[] | select(.name == "b0") | .inconsistent' <<<"$output")" = true ] ||
            { fail "bitmap --list $f exits 0 and reports nothing wrong with b0: $(jq -c . <<<"$output")"; return 1; }
    fi
}

# check_reports_and_repairs FILE RC: blockctl check exits RC (as qemu-img
# check does) naming the bitmap problem; check -r all repairs it: exit 0,
# qemu-img check clean, --list works, b1 reads as before
check_reports_and_repairs() {
    local f=$1 qrc=0
    qemu-img check "$f" >/dev/null 2>&1 || qrc=$?
    run_guarded "$PROG" check "$f"
    assert_no_crash || { fail "check $f"; return 1; }
    [ "$status" -eq "$2" ] || { fail "check $f exited $status, expected $2 (qemu-img check: $qrc): $stderr $output"; return 1; }
    [[ "$output$stderr" == *[Bb]itmap* || "$output$stderr" == *"cluster"* ]] ||
        { fail "check $f does not say what is wrong: $output $stderr"; return 1; }
    run_guarded "$PROG" check -r all "$f"
    assert_no_crash || { fail "check -r all $f"; return 1; }
    [ "$status" -eq 0 ] || { fail "check -r all $f exited $status: $stderr"; return 1; }
    qemu_clean "$f" || return 1
    run_guarded "$PROG" check "$f"
    [ "$status" -eq 0 ] || { fail "check after the repair exited $status: $output"; return 1; }
    run_guarded "$PROG" bitmap --list --output=json "$f"
    [ "$status" -eq 0 ] || { fail "--list after the repair exited $status: $stderr"; return 1; }
    run_guarded "$PROG" bitmap --dump --output=json "$f" b1
    [ "$status" -eq 0 ] || { fail "--dump b1 after the repair exited $status: $stderr"; return 1; }
    [ "$output" = "$(cat "$BATS_FILE_TMPDIR/good.b1.json")" ] || { fail "b1 changed: $output"; return 1; }
    # b0 is now either consistent and readable, or inconsistent (and refused)
    run_guarded "$PROG" bitmap --dump "$f" b0
    assert_no_crash || return 1
    if [ "$status" -ne 0 ]; then
        [[ $stderr == *inconsistent* ]] || { fail "--dump b0 after the repair: $stderr"; return 1; }
    fi
}

@test "the good image: list, dump, check all work (sanity of the cases' source)" {
    use good
    qemu_clean good.qcow2
    run_guarded "$PROG" bitmap --list --output=json good.qcow2
    [ "$status" -eq 0 ]
    [ "$(jq -c '[.[] | [.name, .count]]' <<<"$output")" = '[["b0",1114112],["b1",1114112]]' ] || fail "$output"
    run_guarded "$PROG" check good.qcow2
    [ "$status" -eq 0 ]
}

@test "nb_bitmaps 0" { broken_directory nb0; }
@test "nb_bitmaps 0x7fffffff" { broken_directory nbhuge; }
@test "nb_bitmaps smaller than the directory" { broken_directory nb1; }
@test "nb_bitmaps larger than the directory" { broken_directory nb3; }
@test "directory size 0" { broken_directory dirsize0; }
@test "directory size huge" { broken_directory dirsizehuge; }
@test "directory size cutting the last entry" { broken_directory dirsizeshort; }
@test "directory size larger than its entries" { broken_directory dirsizelong; }
@test "directory offset unaligned" { broken_directory dirunal; }
@test "directory offset past EOF" { broken_directory direof; }
@test "directory offset wrapping around" { broken_directory dirwrap; }
@test "directory offset 0 (the header)" { broken_directory dirzero; }
@test "entry name_size 0" { broken_directory name0; }
@test "entry name_size 2000" { broken_directory name2000; }
@test "entry name running past the directory" { broken_directory namepast; }
@test "granularity_bits 8" { broken_directory gran8; }
@test "granularity_bits 40" { broken_directory gran40; }
@test "granularity_bits 63" { broken_directory gran63; }
@test "bitmap type 2" { broken_directory type2; }
@test "reserved flag bit 4" { broken_directory flagsres; }
@test "reserved flag bit 31" { broken_directory flagsres31; }
@test "bitmap_table_size wrong" { broken_directory tsizewrong; }
@test "bitmap_table_size 0" { broken_directory tsize0; }
@test "bitmap_table_size 0xffffffff" { broken_directory tsizehuge; }
@test "bitmap table offset unaligned" { broken_directory toffunal; }
@test "bitmap table offset past EOF" { broken_directory toffeof; }
@test "bitmap table offset 0" { broken_directory toffzero; }
@test "extra_data_size huge" { broken_directory extrahuge; }
@test "extra_data_size 8 (unknown extra data eating the name)" { broken_directory extra8; }
@test "duplicate bitmap names" { broken_directory dupname; }

@test "bitmap table entry past EOF: reported, check finds it, check -r all repairs" { broken_table tentryeof; }
@test "bitmap table entry unaligned: reported, check finds it, check -r all repairs" { broken_table tentryunal; }
@test "bitmap table entry with reserved bits: reported, check finds it, check -r all repairs" { broken_table tentryres; }
@test "bitmap table entry past EOF: --list does not give b0 a count silently" { list_reports tentryeof; }
@test "bitmap table entry unaligned: --list does not give b0 a count silently" { list_reports tentryunal; }
@test "bitmap table entry with reserved bits: --list does not give b0 a count silently" { list_reports tentryres; }

@test "bitmap table entry pointing at a metadata cluster: check finds it, check -r all repairs" {
    use tentryhdr
    run_guarded "$PROG" bitmap --list tentryhdr.qcow2
    assert_no_crash
    run_guarded "$PROG" bitmap --dump tentryhdr.qcow2 b0
    assert_no_crash
    local qrc=0
    qemu-img check tentryhdr.qcow2 >/dev/null 2>&1 || qrc=$?
    [ "$qrc" -ne 0 ] || skip "qemu-img check finds nothing wrong"
    check_reports_and_repairs tentryhdr.qcow2 "$qrc"
}

@test "refcount 0 of a bitmap data cluster: check reports it as qemu-img does, -r all repairs" {
    use rcdata0
    qemu_check_equal rcdata0.qcow2
    check_reports_and_repairs rcdata0.qcow2 2
}

@test "refcount 2 of a bitmap data cluster: check reports it as qemu-img does, -r all repairs" {
    use rcdata2
    qemu_check_equal rcdata2.qcow2
    local rc=0
    qemu-img check rcdata2.qcow2 >/dev/null 2>&1 || rc=$?
    check_reports_and_repairs rcdata2.qcow2 "$rc"
}

@test "refcount 0 of a bitmap table cluster: check reports it as qemu-img does, -r all repairs" {
    use rctable0
    qemu_check_equal rctable0.qcow2
    check_reports_and_repairs rctable0.qcow2 2
}
