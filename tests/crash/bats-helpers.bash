# tests/crash/bats-helpers.bash - what the matrix's bats files share
# (faults.bats, live.bats): `load bats-helpers`
# SPDX-License-Identifier: GPL-2.0-or-later

# crash_root_make NAME: the file's work folder (CRASH_ROOT, exported), in
# /dev/shm when it can be
crash_root_make() {
    local base=/dev/shm
    [ -d "$base" ] && [ -w "$base" ] || base=$BATS_FILE_TMPDIR
    CRASH_ROOT=$(mktemp -d "$base/$1.XXXXXX")
    export CRASH_ROOT
}

# crash_root_done: remove the work folder, unless points failed: the
# folders of failed points are kept for a look at them
crash_root_done() {
    if [ -n "${CRASH_ROOT:-}" ] && [ -d "$CRASH_ROOT" ]; then
        if find "$CRASH_ROOT/pts" -mindepth 2 -maxdepth 2 -type d 2>/dev/null | grep -q .; then
            echo "# failed points kept in $CRASH_ROOT/pts" >&3
        else
            rm -rf "$CRASH_ROOT"
        fi
    fi
}
