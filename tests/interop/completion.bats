#!/usr/bin/env bats
# dist/bash-completion/blockctl: sourced into bash, _blockctl called with
# COMP_WORDS / COMP_CWORD as bash would: commands, options (each command's
# --help), option arguments (formats from --list-formats, --output's,
# files), verbs, files, the blockctl-COMMAND links, and with --agent the
# disk names of a running blockctl agent (its query-block).
# SPDX-License-Identifier: GPL-2.0-or-later

load ../helpers
load ../copy-helpers
load ../agent-helpers
bats_require_minimum_version 1.5.0

COMPLETION=$BATS_TEST_DIRNAME/../../dist/bash-completion/blockctl

# comp WORD...: the candidates bash would offer for the last WORD, one a
# line, sorted (the completion is loaded in a fresh bash each time)
comp() {
    local bindir
    bindir=$(cd "$(dirname "$PROG")" && pwd)
    PATH="$bindir:$PATH" bash -c '
        source "$0" || exit 9
        COMP_WORDS=("${@}")
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        COMP_LINE="${COMP_WORDS[*]}"
        _blockctl || exit 8
        printf "%s\n" "${COMPREPLY[@]}" | sort' "$COMPLETION" "$@"
}

# has WANT GOT: every line of WANT is in GOT
has() {
    local w
    while read -r w; do
        [ -z "$w" ] || grep -qxF -- "$w" <<<"$2" || { fail "'$w' not offered; got: $(echo $2)"; return 1; }
    done <<<"$1"
}

@test "commands: every one of --list-commands, and only those, for 'blockctl <TAB>' and 'blockctl s<TAB>'" {
    [ "$(comp blockctl '')" = "$("$PROG" --list-commands | sort)" ] || fail "$(comp blockctl '')"
    [ "$(comp blockctl s)" = "$("$PROG" --list-commands | grep '^s' | sort)" ] || fail "$(comp blockctl s)"
    has "--help" "$(comp blockctl --)"
}

@test "options: each command's long and short options, as its --help lists them; --opt= for those with an argument" {
    local c want got
    for c in $("$PROG" --list-commands); do
        want=$("$PROG" "$c" --help | grep -oE '^ +(-[^-], )?--[a-zA-Z0-9-]+' | grep -oE -- '--[a-zA-Z0-9-]+' | sort -u)
        got=$(comp blockctl "$c" --)
        has "$want" "$got" || fail "blockctl $c"
        [ "$(grep -c . <<<"$got")" -eq "$(grep -c . <<<"$want")" ] || fail "$c: offered $(echo $got), --help has $(echo $want)"
    done
    has "-f" "$(comp blockctl info -)"
    [ "$(comp blockctl mirror --bitm)" = "--bitmap=" ] || fail "--bitm: $(comp blockctl mirror --bitm)"
    [ "$(comp blockctl mirror --clear-b)" = "--clear-bitmap" ] || fail "--clear-b: $(comp blockctl mirror --clear-b)"
    # through a blockctl-COMMAND link
    has "--backing-chain" "$(comp blockctl-info --)"
    # a link named by its path: the options of the blockctl beside it
    has "--backing-chain" "$(comp "$(dirname "$PROG")/blockctl-info" --)"
}

@test "option arguments: formats (--list-formats) after -f, -O and --format=, --output's values, --sync's, files after -b" {
    local fmts
    fmts=$("$PROG" --list-formats | sort)
    [ "$fmts" = "$(printf 'qcow2\nraw')" ] || fail "--list-formats: $fmts"
    [ "$(comp blockctl info -f '')" = "$fmts" ] || fail "-f: $(comp blockctl info -f '')"
    [ "$(comp blockctl mirror -O q)" = qcow2 ] || fail "-O q: $(comp blockctl mirror -O q)"
    [ "$(comp blockctl info --format = '')" = "$fmts" ] || fail "--format=: $(comp blockctl info --format = '')"
    [ "$(comp blockctl info --output = '')" = "$(printf 'human\njson')" ] || fail "--output=: $(comp blockctl info --output = '')"
    [ "$(comp blockctl mirror --sync '')" = "$(printf 'bitmap\nfull\nnone\ntop')" ] || fail "--sync"
    cd "$BATS_TEST_TMPDIR"
    touch base.qcow2 bogus.raw
    [ "$(comp blockctl create -b ba)" = base.qcow2 ] || fail "-b ba: $(comp blockctl create -b ba)"
    # after an option's argument, the next word is an argument again
    [ "$(comp blockctl info -f qcow2 bo)" = bogus.raw ] || fail "info -f qcow2 bo: $(comp blockctl info -f qcow2 bo)"
    # no guess for a size
    [ -z "$(comp blockctl bitmap -g '')" ] || fail "-g: $(comp blockctl bitmap -g '')"
}

@test "arguments: files; job's verbs from its usage lines" {
    cd "$BATS_TEST_TMPDIR"
    mkdir sub
    touch disk.qcow2 sub/x.qcow2
    [ "$(comp blockctl info di)" = disk.qcow2 ] || fail "info di: $(comp blockctl info di)"
    [ "$(comp blockctl info sub/)" = sub/x.qcow2 ] || fail "info sub/: $(comp blockctl info sub/)"
    [ "$(comp blockctl job '')" = "$(printf '%s\n' abort cancel complete list pause resume set-speed show wait | sort)" ] ||
        fail "job: $(comp blockctl job '')"
    [ "$(comp blockctl job s)" = "$(printf 'set-speed\nshow')" ] || fail "job s: $(comp blockctl job s)"
}

@test "--agent: the disk names of a running blockctl agent, by --agent SOCKET, --agent=SOCKET and BLOCKCTL_AGENT" {
    qemu-img create -q -f qcow2 vm/a.qcow2 1M
    qemu-img create -q -f qcow2 vm/b.qcow2 1M
    daemon_up blockctl vda="$PWD/vm/a.qcow2" data1="$PWD/vm/b.qcow2"
    has "$(printf 'vda\ndata1')" "$(comp blockctl info --agent "$QMP" '')"
    [ "$(comp blockctl bitmap --agent = "$QMP" --list d)" = data1 ] || fail "--agent=: $(comp blockctl bitmap --agent = "$QMP" --list d)"
    [ "$(BLOCKCTL_AGENT=$QMP comp blockctl snapshot vd)" = vda ] || fail "BLOCKCTL_AGENT: $(BLOCKCTL_AGENT=$QMP comp blockctl snapshot vd)"
    # the socket itself completes as a file
    [ "$(comp blockctl info --agent "${QMP%.sock}")" = "$QMP" ] || fail "socket: $(comp blockctl info --agent "${QMP%.sock}")"
    daemon_down
    # no agent there: files only, no error
    [ -z "$(comp blockctl info --agent "$QMP" vd)" ] || fail "a stopped agent: $(comp blockctl info --agent "$QMP" vd)"
}
