#!/bin/busybox sh
# vmsilo initramfs init: load the few modules the root needs, mount the read-only root image
# and a writable overlay (ext4 on the overlay disk, or tmpfs), then switch to the real init.
# Every per-VM setting comes from the kernel command line; nothing here is VM-specific.
# Module paths (dependencies first; "?" marks an optional one) are filled in at build time:
MODULES="@MODULES@"

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mkdir -p /proc /sys /dev /run /newroot
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
exec </dev/console >/dev/console 2>&1

name=""
overlay="disk"
overlay_size=""
real_init="/sbin/init"
debug=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmsilo.name=*) name="${arg#vmsilo.name=}" ;;
        vmsilo.overlay=*) overlay="${arg#vmsilo.overlay=}" ;;
        vmsilo.overlay_size=*) overlay_size="${arg#vmsilo.overlay_size=}" ;;
        vmsilo.init=*) real_init="${arg#vmsilo.init=}" ;;
        vmsilo.debug) debug=1 ;;
    esac
done

fail() {
    echo "vmsilo-init: $*"
    if [ -n "$debug" ]; then
        echo "vmsilo-init: vmsilo.debug is set: starting a shell (exit it to power off)"
        setsid cttyhack sh
    else
        echo "vmsilo-init: halting (add vmsilo.debug to the kernel command line for a shell)"
    fi
    sync
    poweroff -f
    # poweroff can fail without ACPI: stop here rather than let the kernel panic on exit.
    while :; do sleep 3600; done
}

module_params() {
    # "virtio_mmio.device=1K@0xfeb00e00:5" -> "device=1K@0xfeb00e00:5": what modprobe would
    # pass from /proc/cmdline for a module that is not built in.
    local mod="$1" arg
    for arg in $(cat /proc/cmdline); do
        case "$arg" in
            "$mod".*=*) echo "${arg#"$mod".}" ;;
        esac
    done
}

kver="$(uname -r)"
for entry in $MODULES; do
    path="${entry#\?}"
    mod="${path##*/}"
    mod="${mod%%.ko*}"
    mod="$(echo "$mod" | tr - _)"
    # shellcheck disable=SC2046
    if ! insmod "/lib/modules/$kver/$path" $(module_params "$mod") 2>/dev/null; then
        [ "$entry" = "$path" ] && fail "cannot load kernel module $path"
    fi
done

# Find a virtio-blk disk by the serial the host gave it; TCG guests can be slow to probe.
find_disk() {
    local serial="$1" tries=0 dev
    while [ "$tries" -lt 300 ]; do
        for dev in /sys/block/*; do
            if [ -r "$dev/serial" ] && [ "$(cat "$dev/serial")" = "$serial" ]; then
                echo "/dev/${dev##*/}"
                return 0
            fi
        done
        tries=$((tries + 1))
        sleep 0.1
    done
    return 1
}

# The filesystem on a block device, from its superblock magic.
fs_type() {
    if [ "$(od -A n -t x1 -j 1024 -N 4 "$1" | tr -d ' \n')" = "e2e1f5e0" ]; then
        echo erofs
    elif [ "$(od -A n -t x1 -j 1080 -N 2 "$1" | tr -d ' \n')" = "53ef" ]; then
        echo ext4
    else
        echo unknown
    fi
}

root_dev="$(find_disk vmsilo-root)" || fail "no root disk: no block device with serial vmsilo-root"
root_fs="$(fs_type "$root_dev")"
[ "$root_fs" = unknown ] && fail "root disk $root_dev holds neither erofs nor ext4"
mkdir -p /run/vmsilo/root /run/vmsilo/overlay
mount -t "$root_fs" -o ro "$root_dev" /run/vmsilo/root ||
    fail "cannot mount root disk $root_dev ($root_fs) read-only"
echo "vmsilo-init: root $root_dev ($root_fs) mounted read-only"

case "$overlay" in
    disk)
        overlay_dev="$(find_disk vmsilo-overlay)" ||
            fail "no overlay disk: no block device with serial vmsilo-overlay (vmsilo.overlay=disk)"
        if [ "$(fs_type "$overlay_dev")" != ext4 ]; then
            echo "vmsilo-init: formatting overlay disk $overlay_dev (ext4)"
            # mke2fs lives in the root image, not in this initramfs.
            mount -o bind /dev /run/vmsilo/root/dev && mount -o bind /proc /run/vmsilo/root/proc ||
                fail "cannot prepare the root image to run mke2fs"
            chroot /run/vmsilo/root /sbin/mke2fs -q -F -t ext4 -L vmsilo-overlay \
                -E discard,lazy_itable_init=1,lazy_journal_init=1 "$overlay_dev" ||
                fail "cannot format overlay disk $overlay_dev"
            umount /run/vmsilo/root/proc /run/vmsilo/root/dev
        fi
        mount -t ext4 -o discard,noatime "$overlay_dev" /run/vmsilo/overlay ||
            fail "cannot mount overlay disk $overlay_dev"
        echo "vmsilo-init: overlay on disk $overlay_dev (ext4)"
        ;;
    tmpfs)
        mount -t tmpfs -o "mode=0755${overlay_size:+,size=$overlay_size}" tmpfs /run/vmsilo/overlay ||
            fail "cannot mount tmpfs overlay (size ${overlay_size:-default})"
        echo "vmsilo-init: overlay on tmpfs${overlay_size:+ of $overlay_size bytes}"
        ;;
    *)
        fail "vmsilo.overlay=$overlay: must be disk or tmpfs"
        ;;
esac

mkdir -p /run/vmsilo/overlay/upper /run/vmsilo/overlay/work
mount -t overlay overlay \
    -o lowerdir=/run/vmsilo/root,upperdir=/run/vmsilo/overlay/upper,workdir=/run/vmsilo/overlay/work \
    /newroot || fail "cannot mount the overlay root filesystem"
echo "vmsilo-init: overlay root mounted"

if [ -n "$name" ]; then
    case "$name" in
        *[!A-Za-z0-9-]*) fail "vmsilo.name=$name: only letters, digits and '-' are allowed" ;;
    esac
    echo "$name" >/newroot/etc/hostname || fail "cannot write /etc/hostname"
fi

[ -x "/newroot$real_init" ] || [ -L "/newroot$real_init" ] ||
    fail "vmsilo.init=$real_init does not exist in the root image"

# Hand the API filesystems to the real init; systemd keeps an already-mounted /run.
for dir in dev proc sys run; do
    mount --move "/$dir" "/newroot/$dir" || fail "cannot move /$dir into the new root"
done
echo "vmsilo-init: switching root to $real_init"
exec switch_root /newroot "$real_init"
