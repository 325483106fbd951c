"""What vmsilo adds to the Debian root: its files, its configure script, its package set.

Pure: returns file contents and shell text; ``build.py`` writes them into a staging tree that
mmdebstrap copies into the image, then runs the configure script inside the image. The
user's ``guestConfig`` files are applied after ours (a user file may replace one of ours) and
the user's commands run last, in order.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from vmsilo.image.spec import GuestFile, ImageSpec, agent_files, library_files

# The smallest complete systemd system vmsilo needs, besides the VM's guestPrograms.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "dbus-user-session",
    "python3",
    "busybox-static",
    "kmod",
    "e2fsprogs",
    "iproute2",
    "linux-image-amd64",
)

# Slow under emulation and useless in a disposable VM, or interactive at first boot.
MASKED_UNITS = (
    "apt-daily.service",
    "apt-daily.timer",
    "apt-daily-upgrade.service",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.service",
    "dpkg-db-backup.timer",
    "e2scrub_all.service",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.service",
    "fstrim.timer",
    "logrotate.service",
    "logrotate.timer",
    "man-db.service",
    "man-db.timer",
    "systemd-firstboot.service",
    "systemd-networkd-wait-online.service",
)

AGENT_UNIT = """\
[Unit]
Description=vmsilo guest agent
# Early, with no network or graphical session dependency: the host waits for its hello. The
# channel device (/dev/virtio-ports/vmsilo.mux or vsock) exists once udev has triggered; if
# it is not there yet the agent exits and is restarted.
After=systemd-udev-trigger.service systemd-modules-load.service
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=/usr/bin/python3 -m vmsilo.agent
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""

# Names NICs and writes networkd's files from the kernel command line, before udev and
# networkd start (``vmsilo.agent.netconf``); only in VMs that have interfaces.
NETWORK_UNIT = """\
[Unit]
Description=vmsilo guest network settings
DefaultDependencies=no
ConditionKernelCommandLine=vmsilo.ifname
Before=systemd-udevd.service systemd-udev-trigger.service systemd-networkd.service
Before=network-pre.target unbound.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 -m vmsilo.agent.netconf

[Install]
WantedBy=sysinit.target
"""

# Gives `user` the host user's ids and mounts the virtiofs shares, before the agent runs
# anything (``vmsilo.agent.shares``); only in VMs that share folders.
SHARES_UNIT = """\
[Unit]
Description=vmsilo shared folders
DefaultDependencies=no
ConditionKernelCommandLine=|vmsilo.share
ConditionKernelCommandLine=|vmsilo.uid
After=systemd-remount-fs.service systemd-modules-load.service
Before=vmsilo-agent.service systemd-user-sessions.service local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 -m vmsilo.agent.shares

[Install]
WantedBy=sysinit.target
"""

# The guest user's systemd and session bus, for tray items and notifications (started before the
# agent, so that programs it runs find the bus), and the proxy's guest half on port 5001.
USER_SESSION_UNIT = """\
[Unit]
Description=vmsilo: the guest user's session (bus for tray and notifications, Wayland display)
ConditionKernelCommandLine=|vmsilo.dbus
ConditionKernelCommandLine=|vmsilo.wayland
After=vmsilo-shares.service systemd-user-sessions.service systemd-logind.service
Before=vmsilo-agent.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'exec systemctl start user@$(id -u user).service'

[Install]
WantedBy=multi-user.target
"""

DBUS_PROXY_SOCKET = """\
[Unit]
Description=vmsilo D-Bus proxy port (5001)
ConditionKernelCommandLine=vmsilo.dbus

[Socket]
ListenStream=/run/vmsilo/ports/5001.sock
SocketMode=0600
DirectoryMode=0755

[Install]
WantedBy=sockets.target
"""

# Started at boot (not on the host's first connection) and ready once it owns the names, so
# that the first program vm-run starts already finds them.
DBUS_PROXY_SERVICE = """\
[Unit]
Description=vmsilo D-Bus proxy (guest half)
ConditionKernelCommandLine=vmsilo.dbus
After=vmsilo-user-session.service
Before=vmsilo-agent.service

[Service]
Type=notify
NotifyAccess=main
User=user
ExecStart=/usr/bin/python3 -m vmsilo.dbusproxy.guest_main
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

WAYLAND_SOCKET = """\
[Unit]
Description=vmsilo Wayland port (5003)
ConditionKernelCommandLine=vmsilo.wayland

[Socket]
ListenStream=/run/vmsilo/ports/5003.sock
SocketMode=0600
DirectoryMode=0755

[Install]
WantedBy=sockets.target
"""

# The guest user's Wayland display (waypipe's server half, joined to streams the host parks on
# port 5003); ready once the display socket exists, so the agent's first program finds it.
WAYLAND_SERVICE = """\
[Unit]
Description=vmsilo Wayland display (guest half)
ConditionKernelCommandLine=vmsilo.wayland
ConditionPathExists=/usr/bin/waypipe
After=vmsilo-user-session.service
Before=vmsilo-agent.service

[Service]
Type=notify
NotifyAccess=main
User=user
ExecStart=/usr/bin/python3 -m vmsilo.agent.wayland
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

# networkd is enabled in every image but runs only in VMs that have interfaces.
NETWORKD_DROPIN = """\
[Unit]
ConditionKernelCommandLine=vmsilo.ifname
"""

# A netvm's unbound runs on the configuration vmsilo-network wrote for its clients; the
# package's helpers (chroot, trust-anchor download) are not used.
UNBOUND_DROPIN = """\
[Unit]
ConditionPathExists=/run/vmsilo/unbound.conf
After=vmsilo-network.service

[Service]
ExecStartPre=
ExecStart=
ExecStart=/usr/sbin/unbound -d -p -c /run/vmsilo/unbound.conf
ExecStopPost=
"""

# Root on the serial console without a password: the console socket is reachable only by
# the host's root and the configured user, who own the VM anyway.
AUTOLOGIN_DROPIN = """\
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM
"""

HOSTS = """\
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
"""

AGENT_DEST = "/usr/lib/python3/dist-packages/vmsilo"
LIBRARY_DEST = "/usr/lib/python3/dist-packages"
CONFIGURE_SCRIPT = "/var/lib/vmsilo-build/configure.sh"

# Docs, manuals and translations are dead weight in a VM image.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)


@dataclass(frozen=True)
class StagedFile:
    path: str
    data: bytes
    mode: int


def packages(spec: ImageSpec) -> list[str]:
    return sorted(set(BASE_PACKAGES) | set(spec.packages))


def configure_script(spec: ImageSpec) -> str:
    """Run inside the image (chroot) after the packages are installed."""
    lines = [
        "#!/bin/sh",
        "set -eu",
        "echo 'vmsilo-stage: configure'",
        "groupadd --gid 1000 user",
        "useradd --uid 1000 --gid 1000 --home-dir /home/user --create-home --shell /bin/bash user",
        "ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime",
        "echo Etc/UTC > /etc/timezone",
        f"python3 -m compileall -q {AGENT_DEST} {LIBRARY_DEST}/dbus_next",
        "systemctl enable vmsilo-agent.service serial-getty@ttyS0.service "
        "vmsilo-network.service vmsilo-shares.service systemd-networkd.service "
        "vmsilo-user-session.service vmsilo-dbus-proxy.socket vmsilo-dbus-proxy.service "
        "vmsilo-wayland.socket vmsilo-wayland.service",
        "systemctl mask " + " ".join(MASKED_UNITS),
    ]
    if spec.enable_units:
        lines.append("systemctl enable " + " ".join(shlex.quote(u) for u in spec.enable_units))
    for number, command in enumerate(spec.commands, start=1):
        quoted = shlex.quote(command)
        banner = f"vmsilo-build: guestConfig command {number}: {command}"
        lines.append(f"echo {shlex.quote(banner)}")
        lines.append(
            f"sh -ec {quoted} || {{ echo 'vmsilo-build: guestConfig command {number} failed' >&2;"
            " exit 1; }"
        )
    lines.append("")
    return "\n".join(lines)


def staged_files(spec: ImageSpec, package_root: Path | None = None) -> list[StagedFile]:
    """Every file vmsilo writes into the image, ours first and then the user's."""
    files = [
        StagedFile("/etc/systemd/system/vmsilo-agent.service", AGENT_UNIT.encode(), 0o644),
        StagedFile("/etc/systemd/system/vmsilo-network.service", NETWORK_UNIT.encode(), 0o644),
        StagedFile("/etc/systemd/system/vmsilo-shares.service", SHARES_UNIT.encode(), 0o644),
        StagedFile("/etc/systemd/system/vmsilo-user-session.service", USER_SESSION_UNIT.encode(),
                   0o644),
        StagedFile("/etc/systemd/system/vmsilo-dbus-proxy.socket", DBUS_PROXY_SOCKET.encode(),
                   0o644),
        StagedFile("/etc/systemd/system/vmsilo-dbus-proxy.service",
                   DBUS_PROXY_SERVICE.encode(), 0o644),
        StagedFile("/etc/systemd/system/vmsilo-wayland.socket", WAYLAND_SOCKET.encode(), 0o644),
        StagedFile("/etc/systemd/system/vmsilo-wayland.service", WAYLAND_SERVICE.encode(),
                   0o644),
        StagedFile(
            "/etc/systemd/system/systemd-networkd.service.d/vmsilo.conf",
            NETWORKD_DROPIN.encode(),
            0o644,
        ),
        StagedFile(
            "/etc/systemd/system/unbound.service.d/vmsilo.conf", UNBOUND_DROPIN.encode(), 0o644
        ),
        StagedFile(
            "/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf",
            AUTOLOGIN_DROPIN.encode(),
            0o644,
        ),
        StagedFile("/etc/hostname", b"vmsilo\n", 0o644),
        StagedFile("/etc/hosts", HOSTS.encode(), 0o644),
        StagedFile("/etc/fstab", b"# the root is set up by the vmsilo initramfs\n", 0o644),
        StagedFile("/etc/default/locale", b"LANG=C.UTF-8\n", 0o644),
        StagedFile(CONFIGURE_SCRIPT, configure_script(spec).encode(), 0o755),
    ]
    from vmsilo.image.spec import default_package_root

    root = package_root or default_package_root()
    for path in agent_files(root):
        rel = path.relative_to(root)
        files.append(StagedFile(f"{AGENT_DEST}/{rel}", path.read_bytes(), 0o644))
    for name, lib_root, path in library_files():
        rel = path.relative_to(lib_root)
        files.append(StagedFile(f"{LIBRARY_DEST}/{name}/{rel}", path.read_bytes(), 0o644))
    files.extend(_user_file(f) for f in spec.files)
    return files


def _user_file(guest_file: GuestFile) -> StagedFile:
    return StagedFile(guest_file.path, guest_file.content.encode(), guest_file.mode)
