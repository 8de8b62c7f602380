# tests/helpers.bash - shared by every bats file: `load ../helpers`
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The oracle is qemu-img / qemu-io 7.2: results are never hard-coded from
# blockctl's own output; they are compared with what QEMU says.

PROG=${PROG:-$BATS_TEST_DIRNAME/../../blockctl}
TESTS_DIR=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
QCOW2EDIT="$TESTS_DIR/data/qcow2edit.py"
export LC_ALL=C TZ=${TZ:-UTC}

bats_require_minimum_version 1.5.0

# requires_cmd CMD...: skip the test when a tool is missing
requires_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || skip "$c is not installed"
    done
}

requires_qemu() {
    requires_cmd qemu-img qemu-io jq python3
}

# fail MSG: print to the test's output (fd 3 is bats' own) and fail
fail() {
    printf '%s\n' "$*" >&2
    return 1
}

# is_asan: true when $PROG is a sanitizer build
is_asan() {
    if [ -z "${_IS_ASAN:-}" ]; then
        local cache="${BATS_RUN_TMPDIR:-/tmp}/.blockctl-is-asan"
        if [ -s "$cache" ] && [ "$(head -1 "$cache")" = "$PROG" ]; then
            _IS_ASAN=$(sed -n 2p "$cache")
        else
            if ldd "$PROG" 2>/dev/null | grep -q libasan ||
                nm "$PROG" 2>/dev/null | grep -q __asan_init; then
                _IS_ASAN=1
            else
                _IS_ASAN=0
            fi
            printf '%s\n%s\n' "$PROG" "$_IS_ASAN" >"$cache"
        fi
    fi
    [ "$_IS_ASAN" = 1 ]
}

# qedit IMG CMD ARGS... [+ CMD ARGS...]: tests/data/qcow2edit.py
qedit() {
    python3 -S "$QCOW2EDIT" "$@"
}

# qedit_batch: lines "IMG CMD ARGS... [+ CMD ARGS...]" on stdin, in one
# python3 run (python3 is slow to start: batch a file's edits)
qedit_batch() {
    python3 -S "$QCOW2EDIT" -
}

# mkq NAME SIZE [OPTS]: qemu-img create -f qcow2
mkq() {
    if [ -n "${3:-}" ]; then
        qemu-img create -q -f qcow2 -o "$3" "$1" "$2"
    else
        qemu-img create -q -f qcow2 "$1" "$2"
    fi
}

# qio IMG 'cmd' 'cmd'...: qemu-io -f qcow2 with one -c per command; fails
# when any command fails (qemu-io itself exits 0 on failed commands, so its
# output is scanned as well)
qio() {
    local img=$1 c out
    shift
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    out=$(qemu-io -f "${QIO_FMT:-qcow2}" "${args[@]}" "$img" 2>&1) || {
        printf 'qemu-io failed on %s:\n%s\n' "$img" "$out" >&2
        return 1
    }
    if grep -qiE 'error|failed|can.t' <<<"$out"; then
        printf 'qemu-io reported an error on %s:\n%s\n' "$img" "$out" >&2
        return 1
    fi
}

# to_raw IMG OUT: the reference contents, as qemu-img reads them
to_raw() {
    qemu-img convert -O raw "$1" "$2"
}

# flip_byte FILE OFFSET: change one byte (xor 0xff), growing nothing
flip_byte() {
    local b
    b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    # shellcheck disable=SC2059
    printf "\\$(printf %o $((b ^ 255)))" |
        dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# jnorm: sort keys, one line
jnorm() {
    jq -S -c .
}

# Fields newer QEMU prints that qemu-img 7.2 lacks; they are dropped from
# blockctl's output before comparing, and nothing else is.
JQ_DROP_NEWER='walk(if type == "object" then del(.children, .compressed) else . end)'

# json_diff A_JSON B_JSON LABEL: compare two JSON documents after sorting
# keys; prints a diff on mismatch
json_diff() {
    local a b
    a=$(jq -S "$JQ_DROP_NEWER" <<<"$1" 2>&1) || { fail "$3: blockctl printed invalid JSON: $1"; return 1; }
    b=$(jq -S . <<<"$2")
    if [ "$a" != "$b" ]; then
        echo "$3: JSON differs (< blockctl, > qemu-img)" >&2
        diff <(echo "$a") <(echo "$b") >&2
        return 1
    fi
}

# text_diff A B LABEL: exact comparison of two texts
text_diff() {
    if [ "$1" != "$2" ]; then
        echo "$3: output differs (< blockctl, > qemu-img)" >&2
        diff <(echo "$1") <(echo "$2") >&2
        return 1
    fi
}

# qemu_map_equal ARGS... IMG: `map --output=json` agrees with qemu-img's,
# extent for extent
qemu_map_equal() {
    local ours theirs rc=0
    theirs=$(qemu-img map --output=json "$@") || { fail "qemu-img map failed"; return 1; }
    ours=$(timeout 60 "$PROG" map --output=json "$@") || rc=$?
    [ "$rc" -eq 0 ] || { fail "blockctl map exited $rc"; return 1; }
    json_diff "$ours" "$theirs" "map $*"
}

# qemu_map_human_equal ARGS... IMG: human `map` equals qemu-img's, with the
# same exit status
qemu_map_human_equal() {
    local ours theirs rc1=0 rc2=0
    theirs=$(qemu-img map "$@" 2>/dev/null) || rc2=$?
    ours=$(timeout 60 "$PROG" map "$@" 2>/dev/null) || rc1=$?
    [ "$rc1" -eq "$rc2" ] || { fail "map $*: blockctl exited $rc1, qemu-img $rc2"; return 1; }
    text_diff "$ours" "$theirs" "map $*"
}

# qemu_info_equal ARGS... IMG: `info --output=json` field for field
qemu_info_equal() {
    local ours theirs rc=0
    theirs=$(qemu-img info --output=json "$@") || { fail "qemu-img info failed"; return 1; }
    ours=$(timeout 60 "$PROG" info --output=json "$@") || rc=$?
    [ "$rc" -eq 0 ] || { fail "blockctl info exited $rc"; return 1; }
    json_diff "$ours" "$theirs" "info $*"
}

# qemu_info_human_equal ARGS... IMG: human `info`, line for line
qemu_info_human_equal() {
    local ours theirs rc=0
    theirs=$(qemu-img info "$@") || { fail "qemu-img info failed"; return 1; }
    ours=$(timeout 60 "$PROG" info "$@") || rc=$?
    [ "$rc" -eq 0 ] || { fail "blockctl info exited $rc"; return 1; }
    text_diff "$ours" "$theirs" "info $*"
}

# qemu_check_equal ARGS... IMG: read-only `check --output=json` gives
# qemu-img's JSON and exit status
qemu_check_equal() {
    local ours theirs rc1=0 rc2=0
    theirs=$(qemu-img check --output=json "$@" 2>/dev/null) || rc2=$?
    ours=$(timeout 60 "$PROG" check --output=json "$@" 2>/dev/null) || rc1=$?
    [ "$rc1" -eq "$rc2" ] || { fail "check $*: blockctl exited $rc1, qemu-img $rc2"; return 1; }
    json_diff "$ours" "$theirs" "check $*"
}

# qemu_clean IMG: qemu-img check finds nothing
qemu_clean() {
    local out rc=0
    out=$(qemu-img check "$@" 2>&1) || rc=$?
    [ "$rc" -eq 0 ] || { printf 'qemu-img check %s exited %d:\n%s\n' "$*" "$rc" "$out" >&2; return 1; }
}

# qemu_same A B: qemu-img compare says identical
qemu_same() {
    local out
    out=$(qemu-img compare "$@" 2>&1) || { printf 'qemu-img compare %s: %s\n' "$*" "$out" >&2; return 1; }
}

# json_get FILE_OR_JSON FILTER
json_get() {
    jq -r "$2" <<<"$1"
}

# expect_exit N CMD...: run CMD and require exit status N
expect_exit() {
    local want=$1 rc=0
    shift
    "$@" || rc=$?
    [ "$rc" -eq "$want" ] || { fail "'$*' exited $rc, expected $want"; return 1; }
}

# run_guarded CMD...: run a blockctl command on a hostile image, with a
# timeout and a cap on memory (address space, or the ASan allocator limit)
# so that an absurd allocation shows as an error instead of a success.
# Sets status/output/stderr like `run --separate-stderr`.
run_guarded() {
    local errf="$BATS_TEST_TMPDIR/.guarded.err"
    status=0
    if is_asan; then
        output=$(ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}max_allocation_size_mb=1024:allocator_may_return_null=1" \
            timeout 10 "$@" 2>"$errf") || status=$?
    else
        output=$( (ulimit -v 2097152 && exec timeout 10 "$@") 2>"$errf") || status=$?
    fi
    stderr=$(<"$errf")
    mapfile -t stderr_lines <"$errf"
}

# assert_clean_failure FILE: after run_guarded, the command failed cleanly:
# non-zero, not a signal, not a timeout, a short stderr naming FILE, and no
# out-of-memory (an absurd allocation attempt)
assert_clean_failure() {
    local file=$1
    [ "$status" -ne 0 ] || { fail "exited 0 (stdout: $output)"; return 1; }
    [ "$status" -ne 124 ] || { fail "timed out (hang)"; return 1; }
    [ "$status" -lt 128 ] || { fail "killed by signal $((status - 128)); stderr: $stderr"; return 1; }
    [ -n "$stderr" ] || { fail "no error message"; return 1; }
    [ "${#stderr_lines[@]}" -le 2 ] || { fail "stderr has ${#stderr_lines[@]} lines: $stderr"; return 1; }
    [[ $stderr == *"$file"* ]] || { fail "stderr does not name $file: $stderr"; return 1; }
    if [[ ${stderr,,} =~ memory|addresssanitizer|runtime\ error ]]; then
        fail "memory trouble: $stderr"
        return 1
    fi
}

# assert_no_crash: the command ended by itself, whatever its status
assert_no_crash() {
    [ "$status" -ne 124 ] || { fail "timed out (hang)"; return 1; }
    [ "$status" -lt 128 ] || { fail "killed by signal $((status - 128)); stderr: $stderr"; return 1; }
    if [[ ${stderr,,} =~ out\ of\ memory|cannot\ allocate|addresssanitizer|runtime\ error ]]; then
        fail "memory trouble: $stderr"
        return 1
    fi
}

# File size in bytes
fsize() {
    stat -c %s "$1"
}
