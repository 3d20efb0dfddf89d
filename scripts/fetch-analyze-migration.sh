#!/usr/bin/env bash
# Fetches QEMU's scripts/analyze-migration.py, the reference the interop tests
# compare `vmstream dump` with, and prints its path.
#
# It comes from Debian's qemu source package, bookworm-backports' (10.0.x) or,
# where that has none, bookworm's (7.2, which fails on 10.0 streams: it knows no
# QEMU_VM_COMMAND section): a private apt configuration with a
# deb-src entry reads the signed Sources index, and only the upstream tarball is
# downloaded, checked against the index's SHA256 by apt, and the one script
# extracted from it. Nothing is installed and the system's apt state is not
# touched. The script is cached in target/qemu-tools/ (git-ignored, never
# committed); a second run prints the cached path without any network access.
#
# Usage: scripts/fetch-analyze-migration.sh     (any user; network to Debian)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD/target/qemu-tools
script=$top/analyze-migration.py

if [[ -s $script ]]; then
    echo "$script"
    exit 0
fi

apt=$top/apt
rm -rf "$apt"
mkdir -p "$apt/sources.list.d" "$apt/lists/partial" "$apt/cache/archives/partial"
cat >"$apt/sources.list.d/qemu-source.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources.list.d"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User="$(id -un)")

# apt-get update exits 0 when an index could not be fetched; that must not pass for
# "this suite has no qemu source" and fall back to the older one.
if ! err=$(apt-get "${opts[@]}" -qq update 2>&1) || grep -q 'Failed to fetch' <<<"$err"; then
    echo "$err" >&2
    echo "fetch-analyze-migration.sh: apt-get update of the deb-src index failed" >&2
    exit 1
fi

# The orig tarball's line of `apt-get source --print-uris`: 'URI' FILE SIZE SHA256:HASH
uri=""
for suite in bookworm-backports bookworm; do
    if out=$(apt-get "${opts[@]}" source --print-uris "qemu/$suite" 2>/dev/null); then
        read -r uri file _ hash < <(grep -E "^'[^']*\.orig\.tar\.xz' " <<<"$out" | head -1) || true
        [[ -n $uri ]] && break
    fi
done
if [[ -z $uri ]]; then
    echo "fetch-analyze-migration.sh: no qemu source package in bookworm-backports or bookworm" >&2
    exit 1
fi
uri=${uri//\'/}

echo "fetching $file ($suite)" >&2
if ! err=$(/usr/lib/apt/apt-helper "${opts[@]}" download-file "$uri" "$apt/$file" "$hash" 2>&1); then
    echo "$err" >&2
    echo "fetch-analyze-migration.sh: downloading $uri failed" >&2
    exit 1
fi
tar -xJf "$apt/$file" --no-same-owner -C "$apt" --wildcards '*/scripts/analyze-migration.py'
found=$(compgen -G "$apt/*/scripts/analyze-migration.py" | head -1)
if [[ -z $found ]]; then
    echo "fetch-analyze-migration.sh: $file has no scripts/analyze-migration.py" >&2
    exit 1
fi
mv "$found" "$script.tmp"
echo "${file%.orig.tar.xz} ($suite)" >"$top/analyze-migration.source"
rm -rf "$apt"
mv "$script.tmp" "$script"
echo "$script"
