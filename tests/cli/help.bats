#!/usr/bin/env bats
# tests/cli/help.bats - every command's --help: exit status, size, and its
# "Usage:" line against the SYNOPSIS of its man page (as git's t0450 does)
# SPDX-License-Identifier: GPL-2.0-or-later
#
#   PROG    the binary (default: ../../blockctl)
#   MANDIR  the POD sources (default: ../../man); point it at a copy to see
#           the drift tests fail

if [ -f "$BATS_TEST_DIRNAME/../helpers.bash" ]; then
    load ../helpers
else
    PROG=${PROG:-$BATS_TEST_DIRNAME/../../blockctl}
    export LC_ALL=C
    fail() {
        printf '%s\n' "$*" >&2
        return 1
    }
fi
MANDIR=${MANDIR:-$BATS_TEST_DIRNAME/../../man}

# page_of CMD: the command's page (section 1, or 8 for the daemon)
page_of() {
    if [ -f "$MANDIR/blockctl-$1.8.pod" ]; then
        echo "$MANDIR/blockctl-$1.8.pod"
    else
        echo "$MANDIR/blockctl-$1.1.pod"
    fi
}

# page_section CMD: 1 or 8
page_section() {
    local p
    p=$(page_of "$1")
    p=${p%.pod}
    echo "${p##*.}"
}

# A screenful: what --help may take
MAX_LINES=40
MAX_COLS=100

commands() {
    "$PROG" --list-commands
}

# usage_line ARGV0 [ARGS...]: the text after "Usage: " on the first line of
# --help
usage_line() {
    "$@" --help | sed -n '1s/^Usage: //p'
}

# synopsis_first POD: the first line of the SYNOPSIS section, without
# indentation or formatting codes
synopsis_first() {
    awk '/^=head1 / { in_sec = ($0 == "=head1 SYNOPSIS"); next } in_sec' "$1" |
        grep -v '^=' | grep -v '^[[:space:]]*$' | head -n 1 |
        sed -E 's/^[[:space:]]+//; s/[[:space:]]+$//; s/[BICFS]<([^<>]*)>/\1/g'
}

# fits_screen TEXT LABEL: at most MAX_LINES lines of at most MAX_COLS columns
fits_screen() {
    local lines cols
    lines=$(printf '%s\n' "$1" | wc -l)
    cols=$(printf '%s\n' "$1" | awk '{ if (length($0) > m) m = length($0) } END { print m + 0 }')
    [ "$lines" -le "$MAX_LINES" ] || { fail "$2: $lines lines (at most $MAX_LINES)"; return 1; }
    [ "$cols" -le "$MAX_COLS" ] || { fail "$2: a line of $cols columns (at most $MAX_COLS)"; return 1; }
}

@test "--list-commands lists the commands of --help, one a line" {
    run --separate-stderr "$PROG" --list-commands
    [ "$status" -eq 0 ] || fail "exit $status"
    [ -z "$stderr" ] || fail "stderr: $stderr"
    [ "${#lines[@]}" -ge 5 ] || fail "only ${#lines[@]} commands: $output"
    local c listed
    for c in "${lines[@]}"; do
        [[ $c =~ ^[a-z][a-z0-9-]*$ ]] || fail "bad command name '$c'"
    done
    # the "Commands:" block of --help names the same commands, in order
    listed=$("$PROG" --help | awk '/^Commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^$/ { exit }')
    [ "$listed" = "$output" ] || fail "--help lists '$listed', --list-commands '$output'"
}

@test "blockctl --help exits 0, prints on stdout only, and fits on a screen" {
    run --separate-stderr "$PROG" --help
    [ "$status" -eq 0 ] || fail "exit $status"
    [ -z "$stderr" ] || fail "stderr: $stderr"
    [[ ${lines[0]} == "Usage: blockctl "* ]] || fail "first line: ${lines[0]}"
    fits_screen "$output" "blockctl --help"
}

@test "every command's --help exits 0, prints on stdout only, and fits on a screen" {
    local c bad=0
    for c in $(commands); do
        run --separate-stderr "$PROG" "$c" --help
        if [ "$status" -ne 0 ]; then
            echo "$c --help: exit $status" >&2; bad=1; continue
        fi
        if [ -n "$stderr" ]; then
            echo "$c --help: stderr: $stderr" >&2; bad=1
        fi
        if [[ ${lines[0]} != "Usage: blockctl $c "* ]]; then
            echo "$c --help: first line: ${lines[0]}" >&2; bad=1
        fi
        fits_screen "$output" "$c --help" || bad=1
    done
    [ "$bad" -eq 0 ]
}

@test "blockctl's Usage line equals the first SYNOPSIS line of blockctl(1)" {
    local pod=$MANDIR/blockctl.1.pod
    [ -f "$pod" ] || fail "$pod is missing"
    local u s
    u=$(usage_line "$PROG")
    s=$(synopsis_first "$pod")
    [ -n "$u" ] || fail "no Usage line in blockctl --help"
    [ "$u" = "$s" ] || fail "--help: '$u'" "page:   '$s'"
}

@test "every command's Usage line equals the first SYNOPSIS line of its page" {
    local c pod u s bad=0
    for c in $(commands); do
        pod=$(page_of "$c")
        if [ ! -f "$pod" ]; then
            echo "$c: $pod is missing" >&2; bad=1; continue
        fi
        u=$(usage_line "$PROG" "$c")
        s=$(synopsis_first "$pod")
        if [ -z "$u" ]; then
            echo "$c: no Usage line in --help" >&2; bad=1
        elif [ "$u" != "$s" ]; then
            printf '%s: usage and synopsis differ\n  --help: %s\n  page:   %s\n' "$c" "$u" "$s" >&2
            bad=1
        fi
    done
    [ "$bad" -eq 0 ]
}

# usage_lines ARGS...: the "Usage:" line and every "  or:" line of --help,
# without their prefixes
usage_lines() {
    "$PROG" "$@" --help | sed -n -E '/^(Usage| +or):/ { s/^(Usage| +or): +//; p }'
}

# synopsis_lines POD N: the first N lines of the SYNOPSIS section, as
# synopsis_first gives the first
synopsis_lines() {
    awk '/^=head1 / { in_sec = ($0 == "=head1 SYNOPSIS"); next } in_sec' "$1" |
        grep -v '^=' | grep -v '^[[:space:]]*$' | head -n "$2" |
        sed -E 's/^[[:space:]]+//; s/[[:space:]]+$//; s/[BICFS]<([^<>]*)>/\1/g'
}

@test "every command's Usage and 'or:' lines are the first lines of its SYNOPSIS, in order" {
    local c pod u s n bad=0
    for c in $(commands); do
        pod=$(page_of "$c")
        [ -f "$pod" ] || continue
        u=$(usage_lines "$c")
        n=$(printf '%s\n' "$u" | wc -l)
        s=$(synopsis_lines "$pod" "$n")
        if [ "$u" != "$s" ]; then
            printf '%s: usage and synopsis differ\n--help:\n%s\npage:\n%s\n' "$c" "$u" "$s" >&2
            bad=1
        fi
    done
    [ "$bad" -eq 0 ]
}

@test "multicall: blockctl-COMMAND --help is blockctl COMMAND --help" {
    local c link out1 out2 bad=0
    for c in $(commands); do
        link=$BATS_TEST_TMPDIR/blockctl-$c
        ln -sf "$(readlink -f "$PROG")" "$link"
        out1=$("$link" --help) || { echo "blockctl-$c --help: exit $?" >&2; bad=1; continue; }
        out2=$("$PROG" "$c" --help)
        if [ "$out1" != "$out2" ]; then
            echo "blockctl-$c --help differs from blockctl $c --help" >&2
            diff <(echo "$out1") <(echo "$out2") >&2
            bad=1
        fi
    done
    [ "$bad" -eq 0 ]
}

@test "usage errors exit 64: no command, unknown command, unknown option" {
    run --separate-stderr "$PROG"
    [ "$status" -eq 64 ] || fail "no arguments: exit $status"
    [ -z "$output" ] || fail "no arguments: stdout: $output"
    [[ $stderr == *Usage:* ]] || fail "no arguments: stderr: $stderr"

    run --separate-stderr "$PROG" no-such-command
    [ "$status" -eq 64 ] || fail "unknown command: exit $status"

    ln -sf "$(readlink -f "$PROG")" "$BATS_TEST_TMPDIR/blockctl-no-such-command"
    run --separate-stderr "$BATS_TEST_TMPDIR/blockctl-no-such-command"
    [ "$status" -eq 64 ] || fail "unknown multicall name: exit $status"

    local c bad=0
    for c in $(commands); do
        run --separate-stderr "$PROG" "$c" --no-such-option
        if [ "$status" -ne 64 ]; then
            echo "$c --no-such-option: exit $status" >&2; bad=1
        fi
    done
    [ "$bad" -eq 0 ]
}

@test "--version prints 'blockctl X.Y.Z' on one line, for blockctl and every command" {
    run --separate-stderr "$PROG" --version
    [ "$status" -eq 0 ] || fail "exit $status"
    [[ $output =~ ^blockctl\ [0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "blockctl --version: $output"
    local c
    for c in $(commands); do
        run --separate-stderr "$PROG" "$c" --version
        [ "$status" -eq 0 ] || fail "$c --version: exit $status"
        [[ $output =~ ^blockctl\ [0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "$c --version: $output"
    done
}
