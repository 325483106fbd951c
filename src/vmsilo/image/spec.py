"""The inputs of a guest image and the digest that names it.

An ``ImageSpec`` holds everything that decides an image's contents and nothing else: VMs
whose specs are equal share one image, and an image whose digest already exists is never
rebuilt. This module is pure apart from ``agent_digest``, which hashes the guest agent's
source files, and stays independent of the config models (``spec_for_vm`` adapts them by
attribute name).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from vmsilo.errors import UserError

# Bump whenever the builder changes what it puts into an image (packages, files, packing):
# every digest changes with it, so old images are rebuilt instead of silently reused.
BUILDER_VERSION = "3"

DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# The guest side of vmsilo: copied into every image, and hashed into its digest.
AGENT_PARTS: tuple[str, ...] = (
    "__init__.py", "systemd.py", "agent", "protocol", "channel", "dbusproxy")
# Pure-Python libraries the guest's vmsilo code needs and Debian 12 does not package:
# copied into the image from this installation (and part of the agent digest).
GUEST_LIBRARIES: tuple[str, ...] = ("dbus_next",)

# Debian package names (policy 5.6.1), optionally with an architecture qualifier.
_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9]+)?\Z")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.(service|socket|timer|path|target|mount)\Z")


@dataclass(frozen=True)
class GuestFile:
    """A file written into the image at build time."""

    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class ImageSpec:
    """Everything an image is built from. ``digest()`` names the image directory."""

    suite: str = DEFAULT_SUITE
    mirror: str = DEFAULT_MIRROR
    packages: tuple[str, ...] = ()
    files: tuple[GuestFile, ...] = ()
    commands: tuple[str, ...] = ()
    enable_units: tuple[str, ...] = ()
    agent_digest: str = ""
    builder_version: str = BUILDER_VERSION

    def normalized(self) -> ImageSpec:
        """The canonical form: package and unit order does not matter, duplicates vanish.
        File order and command order do matter (a later file or command wins)."""
        return ImageSpec(
            suite=self.suite,
            mirror=self.mirror.rstrip("/"),
            packages=tuple(sorted(set(self.packages))),
            files=self.files,
            commands=self.commands,
            enable_units=tuple(sorted(set(self.enable_units))),
            agent_digest=self.agent_digest,
            builder_version=self.builder_version,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self.normalized())
        data["files"] = [asdict(f) for f in self.normalized().files]
        return data

    def digest(self) -> str:
        """SHA-256 over the canonical JSON form; 32 hex digits are plenty to name a dir."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def validate(self, where: str = "image") -> None:
        """Reject inputs that cannot build, before any work starts."""
        problems: list[str] = []
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", self.suite):
            problems.append(f"{where}.suite: {self.suite!r} is not a Debian suite name")
        if not re.fullmatch(r"(https?|file)://\S+", self.mirror):
            problems.append(f"{where}.mirror: {self.mirror!r} is not an http(s):// or file:// URL")
        for name in self.packages:
            if not _PACKAGE_NAME.fullmatch(name):
                problems.append(
                    f"{where}.guestPrograms: {name!r} is not a Debian package name "
                    "(lower case letters, digits, '+', '-', '.')"
                )
        for guest_file in self.files:
            path = PurePosixPath(guest_file.path)
            if not path.is_absolute() or ".." in path.parts or str(path) == "/":
                problems.append(
                    f"{where}.guestConfig.files: path {guest_file.path!r} must be an absolute "
                    "path to a file, without '..'"
                )
            if not 0 <= guest_file.mode <= 0o7777:
                problems.append(
                    f"{where}.guestConfig.files: mode {oct(guest_file.mode)} of "
                    f"{guest_file.path!r} is not a file mode (0 to 0o7777)"
                )
        for unit in self.enable_units:
            if not _UNIT_NAME.fullmatch(unit):
                problems.append(
                    f"{where}.guestConfig.enableUnits: {unit!r} is not a systemd unit name "
                    "(e.g. 'foo.service')"
                )
        if problems:
            raise UserError("\n".join(problems))


def _agent_files(package_root: Path) -> Iterator[Path]:
    for part in AGENT_PARTS:
        top = package_root / part
        if top.is_file():
            yield top
        elif top.is_dir():
            for path in sorted(top.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    yield path


def agent_files(package_root: Path | None = None) -> list[Path]:
    """The guest agent's source files, as copied into the image (no bytecode)."""
    return list(_agent_files(package_root or default_package_root()))


def default_package_root() -> Path:
    import vmsilo

    return Path(vmsilo.__file__).parent


def library_files() -> list[tuple[str, Path, Path]]:
    """(library, its root, file) for every file of ``GUEST_LIBRARIES``."""
    import importlib

    found = []
    for name in GUEST_LIBRARIES:
        root = Path(importlib.import_module(name).__file__ or "").parent
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix == ".py":
                found.append((name, root, path))
    return found


def agent_digest(package_root: Path | None = None) -> str:
    """Hash of the agent's files (names and contents) and the guest libraries': a change of
    either gives a new image."""
    root = package_root or default_package_root()
    digest = hashlib.sha256()
    for path in _agent_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    for name, lib_root, path in library_files():
        digest.update(f"{name}/{path.relative_to(lib_root)}".encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


# --- adapter from the config models (duck-typed: the builder does not import pydantic) ---


class _FileLike(Protocol):
    path: str
    content: str
    mode: Any


class _ModuleLike(Protocol):
    files: Sequence[_FileLike]
    commands: Sequence[str]
    enable_units: Sequence[str]


def parse_mode(value: object, where: str) -> int:
    """A file mode as written in TOML: an int (0o644 / 420) or an octal string ("0644")."""
    if isinstance(value, bool):
        raise UserError(f'{where}: mode {value!r} is not a file mode; write e.g. "0644"')
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{1,4}", value):
        return int(value.replace("o", ""), 8)
    raise UserError(f'{where}: mode {value!r} is not a file mode; write e.g. "0644"')


# A netvm forwards and NATs for its clients (nftables) and resolves names for them (unbound).
NETVM_PACKAGES = ("nftables", "unbound", "dns-root-data")


# A VM with a Wayland display runs waypipe's server half.
WAYLAND_PACKAGES = ("waypipe",)


def _role_packages(vm: Any) -> tuple[str, ...]:
    network = getattr(vm, "network", None)
    packages: tuple[str, ...] = NETVM_PACKAGES if getattr(network, "is_netvm", False) else ()
    if getattr(getattr(vm, "gpu", None), "wayland", False):
        packages += WAYLAND_PACKAGES
    return packages


def spec_for_vm(
    name: str,
    vm: Any,
    *,
    suite: str = DEFAULT_SUITE,
    mirror: str = DEFAULT_MIRROR,
    agent: str | None = None,
) -> ImageSpec:
    """Map a config VM (``guest_programs``, ``guest_config``) to the spec of its image."""
    files: list[GuestFile] = []
    commands: list[str] = []
    units: list[str] = []
    modules: Iterable[_ModuleLike] = getattr(vm, "guest_config", None) or ()
    for index, module in enumerate(modules):
        for guest_file in getattr(module, "files", None) or ():
            where = f"vms.{name}.guestConfig[{index}].files"
            files.append(
                GuestFile(
                    path=str(guest_file.path),
                    content=str(guest_file.content),
                    mode=parse_mode(getattr(guest_file, "mode", 0o644), where),
                )
            )
        commands.extend(getattr(module, "commands", None) or ())
        units.extend(getattr(module, "enable_units", None) or ())
    spec = ImageSpec(
        suite=suite,
        mirror=mirror,
        packages=tuple(getattr(vm, "guest_programs", None) or ()) + _role_packages(vm),
        files=tuple(files),
        commands=tuple(commands),
        enable_units=tuple(units),
        agent_digest=agent if agent is not None else agent_digest(),
    ).normalized()
    spec.validate(f"vms.{name}")
    return spec
