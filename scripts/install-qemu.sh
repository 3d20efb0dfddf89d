#!/usr/bin/env bash
# Installs the real QEMU peers the interop tests run against:
#   * QEMU 7.2: Debian bookworm's qemu-system-x86, qemu-system-arm (aarch64,
#     arm), qemu-system-ppc (ppc64), qemu-system-misc (riscv64, s390x) and
#     qemu-utils, installed with apt-get in one call, pinned to one 7.2 version,
#     no recommends, whatever QEMU packages the machine started with (the
#     firmware the other architectures' fixtures boot — SLOF, s390-ccw.img,
#     OpenSBI — comes with qemu-system-data);
#   * QEMU 10.0.x (10.0.2 today): bookworm-backports' qemu-system-x86, NOT installed but unpacked
#     (apt-get download + dpkg -x) into target/qemu-10.0/root together with
#     qemu-system-common, qemu-system-data and every dependency this machine does
#     not already have at the version 10.0 asks for (seabios >= 1.16.3 for one),
#     and run through the wrapper target/qemu-10.0/qemu-system-x86_64.
#
# The module trap: the unpacked 10.0 binary looks for its loadable modules in the
# system module directory /usr/lib/x86_64-linux-gnu/qemu, which holds 7.2's, and
# `-device help` (or any module load) then aborts with "Only modules from the same
# build can be loaded". The wrapper runs it in a private mount namespace
# (unshare -m) with the unpacked module directory bind-mounted over the system
# one. Where mount namespaces are not allowed (an unprivileged container), it
# falls back to QEMU_MODULE_DIR pointing at a directory that holds every module
# name either build knows, so the search never reaches 7.2's.
#
# Idempotent, and takes next to no time when both are already there.
# Usage: scripts/install-qemu.sh        (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD/target/qemu-10.0
root=$top/root
sysmod=/usr/lib/x86_64-linux-gnu/qemu
want10=10.0
sudo=""
[[ $(id -u) == 0 ]] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive

updated=0
apt_update() {
    if [[ $updated == 0 ]]; then
        $sudo apt-get update -qq
        updated=1
    fi
}

# --- QEMU 7.2, installed ------------------------------------------------------
# One apt call with every QEMU package pinned to the same 7.2 version: the image
# may already carry QEMU packages of another version (bookworm-backports'
# qemu-utils 10.0 "Breaks" 7.2's qemu-system-common, so installing
# qemu-system-x86 alone would remove qemu-img). Any qemu-* package installed at
# another version is moved to 7.2 in the same call.
is72() { [[ $1 == 1:7.2* ]]; }
v72() { apt-cache madison "$1" 2>/dev/null | awk -F'|' '/Packages/ {gsub(/ /, "", $2); print $2}' | grep -m1 '^1:7\.2' || true; }
pins=()
want72=(qemu-system-x86 qemu-system-arm qemu-system-ppc qemu-system-misc qemu-utils)
# The 7.2 programs the tests run, and the package each comes from.
declare -A prog72=(
    [qemu-system-x86_64]=qemu-system-x86
    [qemu-system-aarch64]=qemu-system-arm
    [qemu-system-arm]=qemu-system-arm
    [qemu-system-ppc64]=qemu-system-ppc
    [qemu-system-riscv64]=qemu-system-misc
    [qemu-system-s390x]=qemu-system-misc
)
runs72() { "$1" --version 2>/dev/null | grep -q 'version 7\.2\.'; }
while read -r name ver; do
    [[ -n $name ]] || continue
    is72 "$ver" || want72+=("$name")
done < <(dpkg-query -W -f '${db:Status-Status} ${Package} ${Version}\n' 'qemu-*' 2>/dev/null | awk '$1 == "installed" {print $2, $3}')
need72=0
for prog in "${!prog72[@]}"; do
    runs72 "$prog" || need72=1
done
for p in "${want72[@]}"; do
    is72 "$(dpkg-query -W -f '${Version}' "$p" 2>/dev/null || true)" || need72=1
done
other=()
command -v unshare >/dev/null || other+=(util-linux)
command -v mount >/dev/null || other+=(mount)
if [[ $need72 == 1 ]] || ((${#other[@]})); then
    apt_update
    if [[ $need72 == 1 ]]; then
        v=$(v72 qemu-system-x86)
        if [[ -z $v ]]; then
            echo "install-qemu.sh: no QEMU 7.2 (qemu-system-x86 1:7.2*) in the configured apt sources" >&2
            exit 1
        fi
        for p in $(printf '%s\n' "${want72[@]}" | sort -u); do
            pv=$v
            [[ $p == qemu-system-x86 ]] || pv=$(v72 "$p")
            if [[ -n $pv ]]; then
                pins+=("$p=$pv")
            elif [[ " qemu-utils qemu-system-arm qemu-system-ppc qemu-system-misc " == *" $p "* ]]; then
                echo "install-qemu.sh: no $p 1:7.2* in the configured apt sources" >&2
                exit 1
            else
                # An installed qemu-* package without a 7.2 build: 7.2 replaces it.
                pins+=("$p-")
            fi
        done
    fi
    $sudo apt-get install -y -qq --no-install-recommends --allow-downgrades "${pins[@]}" "${other[@]}" >/dev/null
fi

# --- QEMU 10.0.x, unpacked ---------------------------------------------------
have10() { "$top/qemu-system-x86_64" --version 2>/dev/null | grep -q "version ${want10//./\\.}\\."; }

# installed_version PKG: the installed version of PKG, or nothing
installed_version() {
    dpkg-query -W -f '${db:Status-Status} ${Version}\n' "$1" 2>/dev/null | awk '$1 == "installed" {print $2; exit}'
}

# fits VERSION OP WANT: VERSION meets the constraint (OP "prefix": starts with WANT)
fits() {
    [[ -n $1 ]] || return 1
    [[ -z ${2:-} ]] && return 0
    [[ $2 == prefix ]] && { [[ $1 == "$3"* ]]; return; }
    dpkg --compare-versions "$1" "$2" "$3"
}

# satisfied NAME [OP VERSION]: NAME is installed or unpacked here at a fitting version
satisfied() {
    fits "$(installed_version "$1")" "${@:2}" || fits "${unpacked[$1]:-}" "${@:2}"
}

# fetch NAME [OP VERSION]: downloads the newest version of NAME that fits from
# the configured suites and unpacks it into $root
fetch() {
    local name=$1 v pick="" deb err
    for v in $(apt-cache madison "$name" 2>/dev/null | awk -F'|' '/Packages/ {gsub(/ /, "", $2); print $2}'); do
        if fits "$v" "${@:2}"; then pick=$v; break; fi
    done
    if [[ -z $pick ]]; then
        echo "install-qemu.sh: no version of $name fitting '${*:2}' is available" >&2
        return 1
    fi
    echo "unpacking $name $pick"
    if ! err=$(cd "$top/debs" && apt-get download -qq "$name=$pick" 2>&1); then
        echo "$err" >&2
        return 1
    fi
    deb=$(compgen -G "$top/debs/${name}_*.deb" | head -1)
    dpkg -x "$deb" "$root"
    unpacked[$name]=$pick
    queue+=("$deb")
}

# depends DEB: its dependency groups ("a (>= 1) | b"), one a line
depends() {
    dpkg-deb -f "$1" Pre-Depends Depends | sed -e 's/^[A-Za-z-]*: //' | tr ',' '\n' | sed -e 's/^ *//' -e '/^$/d'
}

# parse "name:any (>= 1.2)" -> "name >= 1.2"
parse() { sed -E 's/:any//; s/[()]//g' <<<"$1"; }

if ! have10; then
    if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' |
            $sudo tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
    fi
    updated=0
    apt_update
    rm -rf "$top"
    mkdir -p "$top/debs" "$root"
    declare -A unpacked=()
    queue=()
    for p in qemu-system-x86 qemu-system-common qemu-system-data; do
        fetch "$p" prefix "1:$want10."
    done
    # Whatever 10.0 depends on and this machine lacks at a fitting version is
    # unpacked too, and its own dependencies checked in turn.
    while ((${#queue[@]})); do
        deb=${queue[0]}
        queue=("${queue[@]:1}")
        while IFS= read -r group; do
            IFS='|' read -ra alts <<<"$group"
            ok=0
            for alt in "${alts[@]}"; do
                read -r name op ver <<<"$(parse "$alt")"
                if satisfied "$name" "$op" "$ver"; then ok=1; break; fi
            done
            if [[ $ok == 0 ]]; then
                read -r name op ver <<<"$(parse "${alts[0]}")"
                fetch "$name" "$op" "$ver"
            fi
        done < <(depends "$deb")
    done

    libpath=""
    for d in usr/lib/x86_64-linux-gnu lib/x86_64-linux-gnu; do
        if compgen -G "$root/$d/*.so*" >/dev/null; then libpath=${libpath:+$libpath:}\$T/root/$d; fi
    done
    missing=$(LD_LIBRARY_PATH=${libpath//\$T/$top} ldd "$root/usr/bin/qemu-system-x86_64" | grep 'not found' || true)
    if [[ -n $missing ]]; then
        echo "install-qemu.sh: the unpacked QEMU still lacks libraries:" >&2
        echo "$missing" >&2
        exit 1
    fi

    # Firmware directories, the unpacked ones first.
    # shellcheck disable=SC2016 # $T is the wrapper's own variable
    lflags=' -L "$T/root/usr/share/qemu"'
    for d in usr/share/seabios usr/lib/ipxe/qemu; do
        [[ -d $root/$d ]] && lflags+=" -L \"\$T/root/$d\""
    done
    for d in /usr/share/seabios /usr/lib/ipxe/qemu; do
        [[ -d $d ]] && lflags+=" -L $d"
    done

    # Fallback module directory for where mount namespaces are not allowed:
    # 10.0's modules plus an empty stand-in for every name only the system
    # directory has (a stand-in fails to load harmlessly; 7.2's module would
    # abort QEMU).
    mod=$root/usr/lib/x86_64-linux-gnu/qemu
    mkdir -p "$mod" "$top/modules"
    for f in "$mod"/*.so; do
        [[ -e $f ]] && ln -sf "../root/usr/lib/x86_64-linux-gnu/qemu/${f##*/}" "$top/modules/"
    done
    for f in "$sysmod"/*.so; do
        [[ -e $f && ! -e $top/modules/${f##*/} ]] && : >"$top/modules/${f##*/}"
    done

    cat >"$top/qemu-system-x86_64" <<WRAP
#!/bin/sh
# QEMU $want10 unpacked from bookworm-backports by scripts/install-qemu.sh.
# The unpacked binary would also load modules from $sysmod,
# which are QEMU 7.2's, and abort ("Only modules from the same build can be
# loaded"), so it runs in a private mount namespace with its own module
# directory bound over that one; where no mount namespace can be made, it uses
# QEMU_MODULE_DIR with a directory that shadows every module name instead.
T=\$(cd "\$(dirname "\$0")" && pwd)
M=$sysmod
run() {
    ${libpath:+LD_LIBRARY_PATH="$libpath\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" }exec "\$T/root/usr/bin/qemu-system-x86_64"$lflags "\$@"
}
if [ "\${QEMU10_IN_NAMESPACE:-}" = 1 ]; then
    unset QEMU10_IN_NAMESPACE
    mount --bind "\$T/root/usr/lib/x86_64-linux-gnu/qemu" "\$M" || exit 1
    run "\$@"
fi
if [ "\${QEMU10_NO_NAMESPACE:-0}" != 1 ]; then
    if [ "\$(id -u)" = 0 ]; then
        [ -d "\$M" ] || mkdir -p "\$M" 2>/dev/null
        U="unshare -m"
    else
        U="unshare -r -m"
    fi
    if [ -d "\$M" ] && \$U true 2>/dev/null; then
        QEMU10_IN_NAMESPACE=1 exec \$U "\$T/qemu-system-x86_64" "\$@"
    fi
fi
QEMU_MODULE_DIR=\$T/modules
export QEMU_MODULE_DIR
run "\$@"
WRAP
    chmod +x "$top/qemu-system-x86_64"
    if ! have10; then
        "$top/qemu-system-x86_64" --version >&2 || true
        echo "install-qemu.sh: target/qemu-10.0/qemu-system-x86_64 does not run QEMU $want10" >&2
        exit 1
    fi
    # Module loading, machine and device lists, and the vmstate dump must all
    # work without the module abort.
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
    "$top/qemu-system-x86_64" -machine help >"$out/machines"
    "$top/qemu-system-x86_64" -device help >"$out/devices" 2>"$out/err"
    "$top/qemu-system-x86_64" -machine pc-q35-10.0 -dump-vmstate "$out/vmstate.json" 2>>"$out/err"
    if grep -q 'same build' "$out/err" || ! grep -q virtio-net-pci "$out/devices" ||
        ! grep -q pc-q35-10.0 "$out/machines" || ! [[ -s $out/vmstate.json ]]; then
        cat "$out/err" >&2
        echo "install-qemu.sh: the unpacked QEMU $want10 does not work" >&2
        exit 1
    fi
fi

# --- every program the tests run, run once ----------------------------------
missing=()
for prog in qemu-system-x86_64 qemu-system-aarch64 qemu-system-arm qemu-system-ppc64 qemu-system-riscv64 qemu-system-s390x; do
    runs72 "$prog" || missing+=("$prog (QEMU 7.2, package ${prog72[$prog]})")
done
have10 || missing+=("target/qemu-10.0/qemu-system-x86_64 (QEMU $want10)")
qemu-img --version >/dev/null 2>&1 || missing+=(qemu-img)
unshare --version >/dev/null 2>&1 || missing+=(unshare)
if ((${#missing[@]})); then
    echo "install-qemu.sh: missing after install: ${missing[*]}" >&2
    exit 1
fi
echo "QEMU 7.2:  $(qemu-system-x86_64 --version | head -1)"
echo "           also qemu-system-aarch64, -arm, -ppc64, -riscv64, -s390x"
echo "QEMU 10.0: $("$top/qemu-system-x86_64" --version | head -1)"
echo "qemu-img:  $(qemu-img --version | head -1)"
