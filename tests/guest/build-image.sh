#!/usr/bin/env bash
# Builds the Linux guest used by the end-to-end tests: a kernel (`vmlinuz`) and an initramfs
# (`initramfs.cpio.gz`), from Debian packages only.
#
#   tests/guest/build-image.sh [OUT_DIR]      (default: tests/guest/out; CI uses .cache/guest)
#
# - kernel: the versioned package `linux-image-cloud-amd64` depends on, `apt-get download`ed and
#   unpacked with `dpkg -x`; the virtio block + pci modules and their dependencies go into the
#   initramfs (decompressed, so busybox insmod can load them).
# - userland: busybox-static (every applet as a symlink), fio from the host with the shared
#   libraries `ldd` lists and the dynamic loader.
# - /init: mounts proc/sys/devtmpfs, loads the modules, prints `VU-GUEST-READY` on ttyS0 and runs
#   an interactive shell there (no prompt, no echo) for the harness in tests/src/guest.rs.
#
# Idempotent: OUT_DIR/stamp records the inputs (kernel package + version, busybox and fio
# versions, this script's sha256); when it matches, the script exits at once.
# Needs root on Debian 12; installs missing packages with apt-get.
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname "$SCRIPT_PATH")
OUT=${1:-$SCRIPT_DIR/out}

KERNEL_META=linux-image-cloud-amd64
# Load order matters; dependencies found in modules.dep are loaded first anyway.
# Device drivers: virtio_blk; virtio_rng (hw_random); virtio_net with failover/net_failover;
# vsock with its virtio transport.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
    virtio_rng failover net_failover virtio_net
    vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport)
HOST_PACKAGES=(busybox-static fio socat xz-utils cpio qemu-system-x86)
READY_MARKER=VU-GUEST-READY

log() { echo "build-image: $*" >&2; }
trap 'log "error: command failed at line $LINENO"' ERR
die() {
    log "error: $*"
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "run as root (needs apt-get and mknod)"

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        apt-get update -q >&2
        APT_UPDATED=1
    fi
}

is_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

missing=()
for p in "${HOST_PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    apt_update_once
    log "apt-get install ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

resolve_kernel_pkg() {
    apt-cache depends "$KERNEL_META" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
KPKG=$(resolve_kernel_pkg || true)
if [[ -z $KPKG ]]; then
    apt_update_once
    KPKG=$(resolve_kernel_pkg || true)
fi
[[ -n $KPKG ]] || die "cannot resolve the kernel package $KERNEL_META depends on"
KPKG_VERSION=$(apt-cache show --no-all-versions "$KPKG" | awk '$1 == "Version:" { print $2; exit }')
[[ -n $KPKG_VERSION ]] || die "no version for $KPKG"

STAMP_CONTENT="kernel=$KPKG=$KPKG_VERSION
busybox-static=$(dpkg-query -W -f='${Version}' busybox-static)
fio=$(dpkg-query -W -f='${Version}' fio)
socat=$(dpkg-query -W -f='${Version}' socat)
script-sha256=$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)"

mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
# Serialise concurrent builds into the same directory.
exec 9>"$OUT/.lock"
flock 9

if [[ -f $OUT/stamp && -f $OUT/vmlinuz && -f $OUT/initramfs.cpio.gz ]] &&
    [[ $(cat "$OUT/stamp") == "$STAMP_CONTENT" ]]; then
    log "up to date: $OUT ($KPKG $KPKG_VERSION)"
    exit 0
fi

WORK=$(mktemp -d /tmp/vu-guest-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 0755 "$WORK"
chown _apt "$WORK" 2>/dev/null || true # apt-get download runs as _apt when it can

# --- kernel ---------------------------------------------------------------------------------
log "downloading $KPKG=$KPKG_VERSION"
(cd "$WORK" && apt-get download -q "$KPKG=$KPKG_VERSION" >&2)
dpkg -x "$WORK"/"$KPKG"_*.deb "$WORK/kernel"
KDIR=$( (find "$WORK/kernel/lib/modules" "$WORK/kernel/usr/lib/modules" -mindepth 1 -maxdepth 1 \
    -type d 2>/dev/null || true) | head -n1)
[[ -n $KDIR ]] || die "no modules directory in $KPKG"
KVER=$(basename "$KDIR")
VMLINUZ=$WORK/kernel/boot/vmlinuz-$KVER
[[ -f $VMLINUZ ]] || die "no $VMLINUZ in $KPKG"
if [[ ! -f $KDIR/modules.dep ]]; then
    # The package leaves modules.dep to its postinst; busybox depmod generates it.
    busybox depmod -b "$WORK/kernel" "$KVER" 2>/dev/null ||
        busybox depmod -b "$WORK/kernel/usr" "$KVER"
fi
[[ -f $KDIR/modules.dep ]] || die "no modules.dep for $KVER"

ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc/vu-guest,proc,sys,dev,tmp,run,root,mnt}
chmod 1777 "$ROOT/tmp"

# modules.dep lines: "kernel/a/b.ko[.xz]: dep1.ko dep2.ko" (deps listed last-loaded-first).
mod_path() { # module name -> path relative to KDIR, empty if not a loadable module
    local name=$1 alt
    alt=${name//_/-}
    awk -F: -v a="$name" -v b="$alt" '{
        n = $1; sub(/.*\//, "", n); sub(/\.ko(\.(xz|zst|gz))?$/, "", n)
        if (n == a || n == b) { print $1; exit }
    }' "$KDIR/modules.dep"
}
mod_deps() { # path relative to KDIR -> its dependency paths, load order
    awk -F: -v p="$1" '$1 == p { n = split($2, d, " "); for (i = n; i >= 1; i--) print d[i] }' \
        "$KDIR/modules.dep"
}
is_builtin() {
    grep -Eq "/$1\.ko$" "$KDIR/modules.builtin" 2>/dev/null ||
        grep -Eq "/${1//_/-}\.ko$" "$KDIR/modules.builtin" 2>/dev/null
}

declare -A SEEN=()
LOAD_ORDER=()
add_module_path() {
    local rel=$1 dep
    [[ -n ${SEEN[$rel]:-} ]] && return 0
    while read -r dep; do
        [[ -n $dep ]] && add_module_path "$dep"
    done < <(mod_deps "$rel")
    SEEN[$rel]=1
    LOAD_ORDER+=("$rel")
}
for m in "${MODULES[@]}"; do
    rel=$(mod_path "$m")
    if [[ -z $rel ]]; then
        is_builtin "$m" || die "module $m is neither in modules.dep nor built in"
        log "module $m is built in"
        continue
    fi
    add_module_path "$rel"
done

MODDIR=$ROOT/lib/modules/$KVER
mkdir -p "$MODDIR"
: >"$ROOT/etc/vu-guest/modules"
for rel in "${LOAD_ORDER[@]}"; do
    src=$KDIR/$rel
    name=$(basename "$rel")
    case $name in
        *.ko.xz) xz -dc "$src" >"$MODDIR/${name%.xz}" ;;
        *.ko.zst) zstd -dcq "$src" >"$MODDIR/${name%.zst}" ;;
        *.ko.gz) gzip -dc "$src" >"$MODDIR/${name%.gz}" ;;
        *.ko) cp "$src" "$MODDIR/$name" ;;
        *) die "unexpected module file $rel" ;;
    esac
    base=${name%%.ko*}
    echo "${base//-/_} /lib/modules/$KVER/$base.ko" >>"$ROOT/etc/vu-guest/modules"
done
cp "$KDIR/modules.builtin" "$MODDIR/" 2>/dev/null || true
log "modules: $(cut -d' ' -f1 "$ROOT/etc/vu-guest/modules" | tr '\n' ' ')"

# --- busybox --------------------------------------------------------------------------------
BUSYBOX=/bin/busybox
[[ -x $BUSYBOX ]] || die "$BUSYBOX missing"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; install busybox-static"
fi
cp "$BUSYBOX" "$ROOT/bin/busybox"
while read -r applet; do
    [[ -z $applet || $applet == bin/busybox ]] && continue
    mkdir -p "$ROOT/$(dirname "$applet")"
    [[ -e $ROOT/$applet || -L $ROOT/$applet ]] || ln -s /bin/busybox "$ROOT/$applet"
done < <("$BUSYBOX" --list-full)
# The list is read once: `busybox --list | grep -q` fails under pipefail whenever grep's early
# exit makes busybox die of SIGPIPE, which depends on timing.
applets=$("$BUSYBOX" --list)
for a in blkdiscard dd sync cmp md5sum sha256sum insmod setsid cttyhack stty poweroff ip ping \
    nc; do
    grep -qx "$a" <<<"$applets" || die "busybox lacks the $a applet"
done

# --- fio and its shared libraries -------------------------------------------------------------
copy_with_libs() { # binary path on the host -> same path in the initramfs, plus ldd's libraries
    local bin=$1 line lib
    install -D -m 0755 "$bin" "$ROOT$bin"
    while read -r line; do
        lib=
        case $line in
            *"=> not found"*) die "$bin: missing library: $line" ;;
            *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
            /*) lib=${line%% (*} ;;
        esac
        [[ -n $lib ]] || continue
        mkdir -p "$ROOT$(dirname "$lib")"
        [[ -e $ROOT$lib ]] || cp -L "$lib" "$ROOT$lib"
    done < <(ldd "$bin")
}
copy_with_libs /usr/bin/fio
# socat: busybox's nc has no AF_VSOCK; socat has VSOCK-LISTEN and VSOCK-CONNECT.
copy_with_libs /usr/bin/socat
# util-linux's blkdiscard (-z: write zeroes) and blockdev replace busybox's applets. The applet
# links point at /bin/busybox by absolute path: remove them first, never write through them.
for b in {/bin,/sbin,/usr/bin,/usr/sbin}/{blkdiscard,blockdev}; do
    rm -f "$ROOT$b"
done
copy_with_libs /usr/sbin/blkdiscard
copy_with_libs /usr/sbin/blockdev

cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
EOF
echo vu-guest >"$ROOT/etc/hostname"

# Nodes the kernel needs before /init mounts devtmpfs (the initial console).
mknod -m 600 "$ROOT/dev/console" c 5 1
mknod -m 666 "$ROOT/dev/null" c 1 3

# --- /init ------------------------------------------------------------------------------------
cat >"$ROOT/init" <<EOF
#!/bin/sh
# vu-guest init (generated by tests/guest/build-image.sh)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
exec </dev/ttyS0 >/dev/ttyS0 2>&1
# Only emergency kernel messages on the console: they would interleave with command output.
dmesg -n 1
hostname vu-guest
while read -r mod path; do
    # Present in /sys/module: built in or already loaded.
    [ -e "/sys/module/\$mod" ] && continue
    insmod "\$path" || echo "vu-guest: insmod \$mod failed"
done </etc/vu-guest/modules
# The harness writes commands on the serial line: no echo, no prompt.
stty -echo 2>/dev/null
echo $READY_MARKER
export PS1='' PS2='' PS4='+ '
setsid cttyhack sh
echo "vu-guest: shell exited, powering off"
sync
poweroff -f
EOF
chmod 0755 "$ROOT/init"

# --- pack -------------------------------------------------------------------------------------
log "packing initramfs ($(du -sh "$ROOT" | cut -f1) uncompressed)"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) |
    gzip -6 -n >"$WORK/initramfs.cpio.gz"
cp "$VMLINUZ" "$WORK/vmlinuz"

# Replace atomically, stamp last.
rm -f "$OUT/stamp"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"
printf '%s\n' "$STAMP_CONTENT" >"$OUT/stamp.tmp"
mv -f "$OUT/stamp.tmp" "$OUT/stamp"
log "built $OUT: vmlinuz ($KVER), initramfs.cpio.gz ($(du -h "$OUT/initramfs.cpio.gz" | cut -f1))"
