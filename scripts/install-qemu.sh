#!/usr/bin/env bash
# Installs the real QEMU peers the interop tests run against:
#   * QEMU 7.2: Debian bookworm's qemu-system-x86 (apt, no recommends);
#   * QEMU 10.0.2: bookworm-backports' qemu-system-x86, unpacked (not installed)
#     into target/qemu-10.0 with apt-get download + dpkg -x, and run through the
#     wrapper target/qemu-10.0/qemu-system-x86_64.
# The unpacked 10.0 binary would also load modules from the system module
# directory, which holds 7.2's, and abort ("Only modules from the same build can
# be loaded"); the wrapper runs it in a private mount namespace with its own
# module directory bound over the system one. Idempotent; fast when done.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/target/qemu-10.0
sudo=""
[[ $(id -u) == 0 ]] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive

updated=0
apt_update() { if [[ $updated == 0 ]]; then $sudo apt-get update -qq; updated=1; fi; }

if ! qemu-system-x86_64 --version 2>/dev/null | grep -q 'version 7\.2' || ! command -v qemu-img >/dev/null; then
    apt_update
    $sudo apt-get install -y -qq --no-install-recommends qemu-system-x86 qemu-utils >/dev/null
fi

if ! "$root/qemu-system-x86_64" --version 2>/dev/null | grep -q 'version 10\.0'; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' |
            $sudo tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
        updated=0
    fi
    apt_update
    rm -rf "$root" && mkdir -p "$root/debs" "$root/root"
    (cd "$root/debs" && apt-get download -qq \
        qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
        qemu-system-data/bookworm-backports)
    for d in "$root"/debs/*.deb; do dpkg -x "$d" "$root/root"; done
    # libraries the 10.0 build needs at newer versions than bookworm has
    missing=$(ldd "$root/root/usr/bin/qemu-system-x86_64" | awk '/not found/ {print $1}')
    for lib in $missing; do
        pkg=$(apt-cache search --names-only "^${lib%%.so*}" 2>/dev/null | awk '{print $1}' | head -1)
        echo "fetching $pkg for $lib"
        (cd "$root/debs" && apt-get download -qq "$pkg/bookworm-backports" 2>/dev/null || apt-get download -qq "$pkg")
        for d in "$root"/debs/"$pkg"_*.deb; do dpkg -x "$d" "$root/root"; done
    done
    sysmod=/usr/lib/x86_64-linux-gnu/qemu
    cat > "$root/qemu-system-x86_64" <<WRAP
#!/bin/sh
# QEMU 10.0.2 unpacked from bookworm-backports (see scripts/install-qemu.sh).
R=$root/root
[ -d $sysmod ] || mkdir -p $sysmod
exec unshare -m sh -c 'mount --bind "\$0/usr/lib/x86_64-linux-gnu/qemu" $sysmod && LD_LIBRARY_PATH="\$0/usr/lib/x86_64-linux-gnu" exec "\$0/usr/bin/qemu-system-x86_64" -L "\$0/usr/share/qemu" -L /usr/share/seabios "\$@"' "\$R" "\$@"
WRAP
    chmod +x "$root/qemu-system-x86_64"
fi

qemu-system-x86_64 --version | head -1
"$root/qemu-system-x86_64" --version | head -1
