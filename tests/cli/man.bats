#!/usr/bin/env bats
# tests/cli/man.bats - the man pages: valid POD, the mandatory sections, and
# every option and exit code of --help documented (podwrapper's and git's
# t0450's checks)
# SPDX-License-Identifier: GPL-2.0-or-later
#
#   PROG    the binary (default: ../../blockctl)
#   MANDIR  the POD sources (default: ../../man); point it at a copy to see
#           the tests fail

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
SRCDIR=$BATS_TEST_DIRNAME/../..

# Sections every page must have (STYLE.md 2.6); command pages add EXAMPLES
MANDATORY=(NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" ENVIRONMENT FILES
           "SEE ALSO" AUTHORS COPYRIGHT)

setup() {
    command -v podchecker >/dev/null 2>&1 || skip "podchecker is not installed"
}

commands() {
    "$PROG" --list-commands
}

# pages: blockctl.1.pod and one page per command
pages() {
    local c
    echo "$MANDIR/blockctl.1.pod"
    for c in $(commands); do
        page_of "$c"
    done
}

# section POD NAME: the body of "=head1 NAME", up to the next =head1
section() {
    awk -v want="=head1 $2" '/^=head1 / { in_sec = ($0 == want); next } in_sec' "$1"
}

# help_long ARGS...: the long options of `blockctl ARGS --help`, one a line
help_long() {
    "$PROG" "$@" --help | grep -E '^ +(-[^ ,-], )?--[a-z]' |
        sed -E 's/^ +(-[^ ,-], )?(--[a-z0-9-]+).*/\2/'
}

# help_short ARGS...: the short options of `blockctl ARGS --help`
help_short() {
    "$PROG" "$@" --help | grep -E '^ +-[^ ,-], ' | sed -E 's/^ +(-[^ ,-]),.*/\1/'
}

# exit_codes ARGS...: the exit codes `blockctl ARGS --help` lists, one a line
exit_codes() {
    "$PROG" "$@" --help |
        awk '!on && /Exit status:/ { on = 1; sub(/.*Exit status:/, "") }
             on && /^$/ { exit }
             on' |
        grep -oE '\b[0-9]+\b' | sort -un
}

@test "every command has a page, and blockctl(1) links to each" {
    local c bad=0
    for c in $(commands); do
        if [ ! -f "$(page_of "$c")" ]; then
            echo "man/blockctl-$c.1.pod (or .8.pod) is missing" >&2; bad=1
        fi
        if ! grep -qF "L<blockctl-$c($(page_section "$c"))>" "$MANDIR/blockctl.1.pod"; then
            echo "blockctl.1.pod does not link to blockctl-$c($(page_section "$c"))" >&2; bad=1
        fi
    done
    [ "$bad" -eq 0 ]
}

@test "no page for a command that does not exist" {
    local pod c bad=0
    for pod in "$MANDIR"/blockctl-*.[18].pod; do
        [ -e "$pod" ] || continue
        c=${pod##*/blockctl-}
        c=${c%.[18].pod}
        if ! commands | grep -qxF "$c"; then
            echo "$pod documents '$c', which --list-commands does not list" >&2; bad=1
        fi
    done
    [ "$bad" -eq 0 ]
}

@test "every page passes podchecker without errors or warnings" {
    local pod out bad=0
    for pod in $(pages); do
        [ -f "$pod" ] || { echo "$pod is missing" >&2; bad=1; continue; }
        if ! out=$(podchecker -warnings "$pod" 2>&1); then
            printf '%s\n' "$out" >&2; bad=1
        elif grep -qE '\*\*\* (ERROR|WARNING)' <<<"$out"; then
            printf '%s\n' "$out" >&2; bad=1
        fi
    done
    [ "$bad" -eq 0 ]
}

@test "every page builds with pod2man" {
    command -v pod2man >/dev/null 2>&1 || skip "pod2man is not installed"
    local pod n out bad=0
    for pod in $(pages); do
        n=$(basename "$pod" .pod)
        if ! out=$(pod2man --utf8 --section=1 --center=blockctl --release=blockctl \
                   --name="${n%.1}" --errors=die "$pod" "$BATS_TEST_TMPDIR/$n" 2>&1); then
            printf '%s: %s\n' "$pod" "$out" >&2; bad=1
        elif [ ! -s "$BATS_TEST_TMPDIR/$n" ]; then
            echo "$pod: pod2man wrote nothing" >&2; bad=1
        fi
    done
    [ "$bad" -eq 0 ]
}

@test "every page has the mandatory sections, once each" {
    local pod s want n bad=0
    for pod in $(pages); do
        [ -f "$pod" ] || { echo "$pod is missing" >&2; bad=1; continue; }
        want=("${MANDATORY[@]}")
        [[ $pod == */blockctl.1.pod ]] || want+=(EXAMPLES)
        for s in "${want[@]}"; do
            n=$(grep -cxF "=head1 $s" "$pod" || true)
            if [ "$n" -ne 1 ]; then
                echo "$(basename "$pod"): section '$s' appears $n times" >&2; bad=1
            elif [ -z "$(section "$pod" "$s" | tr -d '[:space:]')" ]; then
                echo "$(basename "$pod"): section '$s' is empty" >&2; bad=1
            fi
        done
    done
    [ "$bad" -eq 0 ]
}

@test "NAME is 'PAGE - summary', as whatis(1) reads it" {
    local pod name bad=0
    for pod in $(pages); do
        name=$(basename "$pod" .pod)
        name=${name%.[18]}
        if ! section "$pod" NAME | grep -qE "^$name - [a-z]"; then
            echo "$(basename "$pod"): NAME does not read '$name - ...'" >&2; bad=1
        fi
    done
    [ "$bad" -eq 0 ]
}

@test "every option of --help is an =item of the page's OPTIONS section" {
    local c pod opts o bad=0
    for c in "" $(commands); do
        if [ -z "$c" ]; then
            pod=$MANDIR/blockctl.1.pod
        else
            pod=$(page_of "$c")
        fi
        [ -f "$pod" ] || { echo "$pod is missing" >&2; bad=1; continue; }
        opts=$(section "$pod" OPTIONS | grep '^=item')
        for o in $(help_long $c) $(help_short $c); do
            if ! grep -qF -- "B<$o>" <<<"$opts"; then
                echo "$(basename "$pod"): option $o of 'blockctl $c --help' has no =item" >&2
                bad=1
            fi
        done
    done
    [ "$bad" -eq 0 ]
}

@test "the options' lists are not empty (the extraction works)" {
    [ "$(help_long info | grep -c -- --output)" -eq 1 ]
    [ "$(help_short info | grep -c -- -f)" -eq 1 ]
    [ "$(help_long create | wc -l)" -ge 8 ]
}

@test "every exit code of --help is an =item of the page's EXIT STATUS section" {
    local c pod codes n bad=0
    for c in "" $(commands); do
        if [ -z "$c" ]; then
            pod=$MANDIR/blockctl.1.pod
        else
            pod=$(page_of "$c")
        fi
        [ -f "$pod" ] || continue
        # the numbers of --help from "Exit status:" (which may start
        # mid-paragraph) to the end of its paragraph
        codes=$(exit_codes $c)
        [ -n "$codes" ] || { echo "blockctl $c --help: no exit status" >&2; bad=1; continue; }
        for n in $codes; do
            if ! section "$pod" "EXIT STATUS" | grep -qxF "=item B<$n>"; then
                echo "$(basename "$pod"): exit code $n of 'blockctl $c --help' has no =item" >&2
                bad=1
            fi
        done
    done
    [ "$bad" -eq 0 ]
}

@test "the exit codes' lists are not empty (the extraction works)" {
    [ "$(exit_codes | tr '\n' ' ')" = "0 1 64 " ]
    # the copying commands are interrupted with 130 (SIGINT) and 143 (SIGTERM)
    local c
    for c in stream commit mirror; do
        commands | grep -qxF "$c" || continue
        exit_codes "$c" | grep -qx 130 || fail "$c --help: no 130"
        exit_codes "$c" | grep -qx 143 || fail "$c --help: no 143"
    done
}

@test "the copying commands' pages describe interruption, locking and bitmaps" {
    local c pod bad=0
    for c in stream commit mirror; do
        commands | grep -qxF "$c" || continue
        pod=$(page_of "$c")
        [ -f "$pod" ] || continue
        for w in SIGINT SIGTERM SIGKILL "=head2 Interruption and failure" \
                 "=head2 Locking" "=head2 Bitmaps" "=head2 The backing file name"; do
            grep -qF -- "$w" "$pod" || { echo "$(basename "$pod"): no '$w'" >&2; bad=1; }
        done
    done
    [ "$bad" -eq 0 ]
}

@test "blockctl(1) documents the environment and every BLOCKCTL_FAULT operation and action" {
    local pod=$MANDIR/blockctl.1.pod env words w bad=0
    env=$(section "$pod" ENVIRONMENT)
    for w in BLOCKCTL_FAULT BLOCKCTL_LOCKING; do
        grep -qF "=item B<$w>" <<<"$env" || { echo "ENVIRONMENT lacks $w" >&2; bad=1; }
    done
    grep -qF 'OP:WHEN:ACTION[:GLOB]' <<<"$env" || { echo "no BLOCKCTL_FAULT syntax" >&2; bad=1; }
    [ -f "$SRCDIR/lib/io.c" ] || skip "lib/io.c is not there"
    # the names the fault parser compares (strcmp(f[0], "pwrite") ...)
    words=$(grep -oE 'strcmp\(f\[[02]\], "[a-z]+"\)' "$SRCDIR/lib/io.c" | sed -E 's/.*"([a-z]+)".*/\1/')
    [ -n "$words" ] || fail "no fault names found in lib/io.c"
    for w in $words; do
        grep -qF "B<$w>" <<<"$env" || { echo "BLOCKCTL_FAULT: '$w' is not documented" >&2; bad=1; }
    done
    [ "$bad" -eq 0 ]
}

@test "each command page names its page in SEE ALSO and links back to blockctl(1)" {
    local c pod bad=0
    for c in $(commands); do
        pod=$(page_of "$c")
        [ -f "$pod" ] || continue
        if ! section "$pod" "SEE ALSO" | grep -qF "L<blockctl(1)>"; then
            echo "$(basename "$pod"): SEE ALSO lacks L<blockctl(1)>" >&2; bad=1
        fi
        if ! section "$pod" COPYRIGHT | grep -qE 'GPL-2\.0-or-later|version 2 of the License, or'; then
            echo "$(basename "$pod"): COPYRIGHT does not name GPL-2.0-or-later" >&2; bad=1
        fi
    done
    [ "$bad" -eq 0 ]
}
