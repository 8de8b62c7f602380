# tests/agent-helpers.bash - `blockctl agent` in a test: `load ../agent-helpers`
# after ../helpers and ../copy-helpers.  The agent runs in the foreground,
# logging to agent.log in the current directory, with its QMP socket at
# $QMP and its NBD socket at unix:$NBD (set them, e.g. with sock_path).
# SPDX-License-Identifier: GPL-2.0-or-later

# ag_start ARGS...: start it with ARGS, once it says ready; sets AG_PID
ag_start() {
    local n=200
    : >agent.log
    bg_start agent.out agent.log "$PROG" agent --qmp "$QMP" --nbd "unix:$NBD" "$@"
    AG_PID=$BG_PID
    until grep -q 'blockctl agent: ready' agent.log; do
        kill -0 "$AG_PID" 2>/dev/null || { fail "the agent died: $(cat agent.log)"; return 1; }
        [ $n -gt 0 ] || { fail "the agent is not ready: $(cat agent.log)"; return 1; }
        sleep 0.05
        n=$((n - 1))
    done
}

# ag_sockets_gone: neither of its sockets is left
ag_sockets_gone() {
    [ ! -e "$QMP" ] || { fail "the QMP socket is left behind"; return 1; }
    [ ! -e "$NBD" ] || { fail "the NBD socket is left behind"; return 1; }
}

# ag_stop [SIGNAL]: signal it (TERM); it must exit 0 within 20 s, without a
# sanitizer report, having removed its sockets
ag_stop() {
    kill -"${1:-TERM}" "$AG_PID"
    bg_wait "$AG_PID" 20
    AG_PID=
    [ "$BG_STATUS" -eq 0 ] || { fail "the agent exited $BG_STATUS: $(cat agent.log)"; return 1; }
    if grep -qiE 'addresssanitizer|runtime error|threadsanitizer' agent.log; then
        fail "sanitizer report: $(cat agent.log)"
        return 1
    fi
    ag_sockets_gone
}

# ag_uri EXPORT [SOCKET]: its NBD URI (on $NBD unless SOCKET)
ag_uri() {
    echo "nbd+unix:///$1?socket=${2:-$NBD}"
}
