#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Print the newest CPython 3 interpreter on this machine when it is newer than the one given
# ($1, default /usr/bin/python3); print nothing when there is none. Looked for: the python3.N
# commands in /usr/bin and /usr/local/bin, and pyenv's versions (~/.pyenv or $PYENV_ROOT).
# `make test` runs the unit and real-mount tests once more under it.
set -eu
base=${1:-/usr/bin/python3}
version() {
    "$1" -I -c 'import sys; print("%d %d" % sys.version_info[:2])' 2> /dev/null
}
best=""
best_key=$(version "$base" | awk '{ printf "%03d%03d", $1, $2 }')
[ -n "$best_key" ] || best_key=000000
for candidate in /usr/bin/python3.* /usr/local/bin/python3.* \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/*/bin/python3; do
    case $candidate in *-config | *m) continue ;; esac
    [ -x "$candidate" ] || continue
    key=$(version "$candidate" | awk '$1 == 3 { printf "%03d%03d", $1, $2 }')
    [ -n "$key" ] || continue
    if [ "$key" -gt "$best_key" ]; then
        best=$candidate
        best_key=$key
    fi
done
[ -z "$best" ] || echo "$best"
