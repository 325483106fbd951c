"""Where vmsilo keeps things on the host, in system mode (root) and user mode.

System mode is what an installed vmsilod uses. User mode lets an unprivileged user (the demo,
the test suite) run VMs without root: everything lives under the user's own directories.
Every other module asks this one; no path is spelled out anywhere else.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Mode(Enum):
    SYSTEM = "system"
    USER = "user"


def default_mode() -> Mode:
    return Mode.SYSTEM if os.geteuid() == 0 else Mode.USER


def _xdg(var: str, fallback: Path) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else fallback


@dataclass(frozen=True)
class Paths:
    """All host paths for one mode. ``root`` relocates everything (tests use a temp dir)."""

    mode: Mode
    run_dir: Path
    state_dir: Path
    image_dir: Path
    shared_root: Path

    @classmethod
    def for_mode(cls, mode: Mode | None = None) -> Paths:
        """The paths of ``mode``. ``VMSILO_ROOT`` moves everything below one directory and
        ``VMSILO_IMAGE_DIR`` moves the image store alone (tests share one built image)."""
        paths = cls._for_mode(mode or default_mode())
        images = os.environ.get("VMSILO_IMAGE_DIR")
        if images:
            paths = dataclasses.replace(paths, image_dir=Path(os.path.abspath(images)))
        return paths

    @classmethod
    def _for_mode(cls, mode: Mode) -> Paths:
        override = os.environ.get("VMSILO_ROOT")
        if override:
            return cls.under(Path(os.path.abspath(override)), mode)
        if mode is Mode.SYSTEM:
            return cls(
                mode=mode,
                run_dir=Path("/run/vmsilo"),
                state_dir=Path("/var/lib/vmsilo"),
                image_dir=Path("/var/lib/vmsilo/images"),
                shared_root=Path("/shared"),
            )
        home = Path.home()
        runtime = _xdg("XDG_RUNTIME_DIR", Path(f"/tmp/vmsilo-{os.getuid()}"))
        data = _xdg("XDG_DATA_HOME", home / ".local/share") / "vmsilo"
        cache = _xdg("XDG_CACHE_HOME", home / ".cache") / "vmsilo"
        return cls(
            mode=mode,
            run_dir=runtime / "vmsilo",
            state_dir=data,
            image_dir=cache / "images",
            shared_root=data / "shared",
        )

    @classmethod
    def under(cls, root: Path, mode: Mode) -> Paths:
        """Every path below one directory: for tests and for trying vmsilo out in place."""
        return cls(
            mode=mode,
            run_dir=root / "run",
            state_dir=root / "state",
            image_dir=root / "images",
            shared_root=root / "shared",
        )

    @property
    def control_socket(self) -> Path:
        return self.run_dir / "control.socket"

    def vm_runtime_dir(self, vm: str) -> Path:
        return self.run_dir / vm

    @property
    def log_dir(self) -> Path:
        if self.mode is Mode.SYSTEM and self.state_dir == Path("/var/lib/vmsilo"):
            return Path("/var/log/vmsilo")
        return self.state_dir / "logs"

    def vm_log_dir(self, vm: str) -> Path:
        """Console and VMM logs; they outlive the VM's runtime directory, so that a failed
        start can point at them."""
        return self.log_dir / vm

    def vm_state_dir(self, vm: str) -> Path:
        return self.state_dir / vm

    def overlay_disk(self, vm: str) -> Path:
        return self.vm_state_dir(vm) / "overlay.raw"

    @property
    def home_template(self) -> Path:
        return self.state_dir / "home-template"

    def shared_home(self, vm: str) -> Path:
        return self.shared_root / vm

    def image(self, digest: str) -> Path:
        return self.image_dir / digest
