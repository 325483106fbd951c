"""``vmsilo-wayland-seccontext``: a Wayland socket for one VM, made by the compositor with the
security-context protocol (``wp_security_context_v1``).

Every client that connects to ``--socket`` is known to the compositor as sandbox engine
``vmsilo``, app id ``vmsilo:<vm>:<#colour>``, instance ``<vm>``: compositors that implement the
protocol (KWin, wlroots-based ones) can then refuse it privileged protocols and colour its
decorations. The socket lives while this process does (the compositor stops listening when the
pipe it was given hangs up), so the Wayland host half (``vmsilo.wayland.host_main``) runs it, in
the same sandbox, for as long as the VM's Wayland path is up.

It prints one line: ``ready`` once the compositor listens, or ``unsupported`` (exit 3) when the
compositor does not offer the protocol, in which case the VM's connections go to the
compositor directly (through vmsilo's filter either way).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

UNSUPPORTED = 3
ENGINE = "vmsilo"


def create(display_path: Path, socket_path: Path, vm: str, app_id: str) -> int | None:
    """Register ``socket_path`` with the compositor; return the write end of the close pipe
    (keep it open as long as the socket should work), or None without the protocol."""
    from pywayland.client.display import Display
    from pywayland.protocol.security_context_v1 import WpSecurityContextManagerV1

    display = Display(str(display_path))
    display.connect()
    try:
        registry = display.get_registry()
        offered: dict[str, int] = {}

        def on_global(_registry: object, name: int, interface: str, _version: int) -> None:
            if interface == WpSecurityContextManagerV1.name:
                offered["name"] = name

        registry.dispatcher["global"] = on_global
        display.roundtrip()
        if "name" not in offered:
            return None
        manager = registry.bind(offered["name"], WpSecurityContextManagerV1, 1)
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(socket_path))
        os.chmod(socket_path, 0o600)
        listener.listen(16)
        close_read, close_write = os.pipe()
        context = manager.create_listener(listener.fileno(), close_read)
        context.set_sandbox_engine(ENGINE)
        context.set_app_id(app_id)
        context.set_instance_id(vm)
        context.commit()
        context.destroy()
        manager.destroy()
        display.roundtrip()  # the compositor has its copies of both descriptors now
        listener.close()
        os.close(close_read)
        return close_write
    finally:
        display.disconnect()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmsilo-wayland-seccontext", description=__doc__)
    parser.add_argument("--display", type=Path, required=True, help="the compositor's socket")
    parser.add_argument("--socket", type=Path, required=True, help="the socket to create")
    parser.add_argument("--vm", required=True)
    parser.add_argument("--app-id", required=True, help="e.g. vmsilo:banking:#2ecc71")
    args = parser.parse_args(argv)
    try:
        keep = create(args.display, args.socket, args.vm, args.app_id)
    except Exception as exc:  # the compositor went away, or refused: say why, in one line
        print(f"error {exc}", flush=True)
        return 1
    if keep is None:
        print("unsupported", flush=True)
        return UNSUPPORTED
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            signal.pause()
    finally:
        os.close(keep)
        with contextlib.suppress(FileNotFoundError):
            args.socket.unlink()


if __name__ == "__main__":
    sys.exit(main())
