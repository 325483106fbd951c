#!/usr/bin/env bash
# Installs what vmsilo needs, from nothing, on Debian: the system packages (only when run as
# root and only those missing), then a virtual environment in .venv with vmsilo and its
# development tools. Safe to run again: it does only what is missing or out of date.
# Run as another user with packages missing, it names them all, with the one command that
# installs them, and stops before doing anything (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."
# Tests point this at an empty directory to see every package as missing.
PKG_ROOT=${VMSILO_BOOTSTRAP_PKG_ROOT:-}

# Debian package -> a file it provides, to tell whether it is installed without dpkg queries
# that differ between releases.
declare -A PACKAGES=(
  [qemu-system-x86]=/usr/bin/qemu-system-x86_64
  [qemu-utils]=/usr/bin/qemu-img
  [mmdebstrap]=/usr/bin/mmdebstrap
  [erofs-utils]=/usr/bin/mkfs.erofs
  [busybox-static]=/bin/busybox
  [kmod]=/usr/bin/kmod
  [e2fsprogs]=/sbin/mke2fs
  [nftables]=/usr/sbin/nft
  [iproute2]=/usr/sbin/ip
  [dbus]=/usr/bin/dbus-daemon
  [bubblewrap]=/usr/bin/bwrap
  [cpio]=/usr/bin/cpio
  [desktop-file-utils]=/usr/bin/desktop-file-validate
  # newuidmap/newgidmap: image builds without root (mmdebstrap --mode=unshare) and user mode.
  [uidmap]=/usr/bin/newuidmap
  # Wayland: waypipe carries guest windows; the protocol XML gives the filter its tables;
  # weston (headless) is the compositor the tests and benches show windows on.
  [waypipe]=/usr/bin/waypipe
  [libwayland-dev]=/usr/share/wayland/wayland.xml
  [wayland-protocols]=/usr/share/wayland-protocols/stable/xdg-shell/xdg-shell.xml
  [weston]=/usr/bin/weston
  [wayland-utils]=/usr/bin/wayland-info
)

missing=()
for pkg in $(printf '%s\n' "${!PACKAGES[@]}" | sort); do
  [ -e "$PKG_ROOT${PACKAGES[$pkg]}" ] || missing+=("$pkg")
done
# Debian's own python3 needs python3-venv to make a virtual environment with pip in it.
if [ -n "$PKG_ROOT" ] || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    # All of them at once, before anything is done: a half set-up fails later, one
    # package at a time (an image build without uidmap, a test without weston).
    {
      echo "bootstrap: missing Debian packages: ${missing[*]}"
      echo "bootstrap: install them as root, then run this again:"
      echo "  sudo apt-get install --no-install-recommends ${missing[*]}"
    } >&2
    exit 1
  fi
fi

VENV=${VENV:-.venv}
stamp="$VENV/.vmsilo-installed"
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  python3 -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing vmsilo and its development tools into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

# Bash completion for the commands (VM names from the config): system-wide as root, else for
# this user (bash-completion looks there for a command's completion when it is first used).
completion="$(pwd)/contrib/bash-completion/vmsilo"
if [ "$(id -u)" = 0 ]; then
  if [ -d /etc/bash_completion.d ] && ! cmp -s "$completion" /etc/bash_completion.d/vmsilo; then
    cp "$completion" /etc/bash_completion.d/vmsilo
  fi
else
  dir="${XDG_DATA_HOME:-$HOME/.local/share}/bash-completion/completions"
  mkdir -p "$dir"
  for command in vmsilo vm-run vm-start vm-stop vm-shell vsock-connect; do
    ln -sf "$completion" "$dir/$command"
  done
fi
