#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Install the packages of tests/packages that are missing: as root, with apt-get, never removing a
# package. As another user, or where there is no apt-get, only say which are missing (the tests
# that need them then skip). Run by `make test` (`make prerequisites`).
set -eu
cd "$(dirname "$0")/.."

packages=$(sed -e 's/#.*//' tests/packages | awk 'NF { print $1 }')
missing=""
for package in $packages; do
    dpkg-query -W -f='${Status}\n' "$package" 2> /dev/null | grep -q ' ok installed$' \
        || missing="$missing $package"
done
[ -n "$missing" ] || exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null; then
    echo "prerequisites: not installed:$missing (tests that need them skip; as root, make test installs them)" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt="apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends"
echo "prerequisites: installing$missing" >&2
$apt -qq update
# shellcheck disable=SC2086 # word splitting wanted: options and package names
if $apt -s install $missing | grep '^Remv '; then
    echo "prerequisites: installing$missing would remove the packages above; install them by hand" >&2
    exit 1
fi
# shellcheck disable=SC2086
$apt -qq install $missing > /dev/null
