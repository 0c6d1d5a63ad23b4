#!/bin/sh
# Build the Debian package with Debian's own python3 and debhelper:
#   scripts/build-deb.sh [output directory, default ./dist]
# Build dependencies (debian/control): apt-get install debhelper dh-python
# pybuild-plugin-pyproject python3-all python3-setuptools
# The build runs in a copy of the sources (dpkg-buildpackage writes the .deb
# next to the source tree, and the build leaves files in it), so the checkout
# stays clean.
set -eu
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
version="$(dpkg-parsechangelog -l "$repo/debian/changelog" -S Version)"
src="$work/mogstored-$version"
mkdir "$src"
(cd "$repo" && cp -r pyproject.toml README.md mogstored man etc debian "$src/")
find "$src" -name __pycache__ -prune -exec rm -rf {} +
# Debian's interpreter, not one a PATH or virtualenv puts first (pyenv, venv).
(cd "$src" && env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    dpkg-buildpackage -b -us -uc)
mv "$work"/*.deb "$out/"
ls "$out"/mogstored_"$version"_all.deb
