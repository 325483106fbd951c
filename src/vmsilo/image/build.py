"""Build one guest image: mmdebstrap, our files, configure, pack, kernel and initramfs.

One mmdebstrap run does it all. Our files and the agent are staged in a directory that a
customize hook copies into the root; a second hook runs the configure script in a chroot; the
last one runs ``vmsilo.image.pack`` on the finished root. mmdebstrap's output goes to the
build log, whose ``vmsilo-stage:`` lines drive the progress display. Everything is built in
a temporary sibling of the image directory and renamed into place only when complete, so a
failure leaves nothing half-built; the log stays and is named in the error.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vmsilo.errors import UserError
from vmsilo.host import proc
from vmsilo.host.paths import Paths
from vmsilo.image import guest, manifest
from vmsilo.image.spec import ImageSpec

STAGES = ("bootstrap", "configure", "pack", "kernel+initramfs")
DEFAULT_COMPRESSION = "lz4"

# Host tool -> the Debian package that provides it.
REQUIRED_TOOLS = {"mmdebstrap": "mmdebstrap", "mkfs.erofs": "erofs-utils"}
UNSHARE_TOOLS = {"newuidmap": "uidmap", "newgidmap": "uidmap"}

# Renames the kernel package's initramfs generator away: its initrd is never used (we write
# our own) and generating it costs a minute per build.
_DIVERT_UPDATE_INITRAMFS = (
    'chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs'
    ' && ln -sf /bin/true "$1/usr/sbin/update-initramfs"'
)

StageCallback = Callable[[str], None]


class BuildError(UserError):
    """A build failed; the message says why and names the log."""

    def __init__(self, message: str, log: Path | None) -> None:
        self.log = log
        super().__init__(message + (f"\nfull build log: {log}" if log else ""))


@dataclass(frozen=True)
class BuildResult:
    digest: str
    path: Path
    reused: bool
    seconds: float


def apt_cache_dir(paths: Paths) -> Path:
    """Downloaded .debs, kept between builds so that rebuilds need not fetch them again."""
    return paths.image_dir.parent / "apt-archives"


def log_path(paths: Paths, digest: str) -> Path:
    return paths.image_dir / "logs" / f"{digest}.log"


def check_tools(env_path: str | None = None, *, unshare: bool = False) -> None:
    """Fail before any work if a host tool is missing, naming the package to install."""
    tools = dict(REQUIRED_TOOLS)
    if unshare:
        tools.update(UNSHARE_TOOLS)
    path = env_path if env_path is not None else os.environ.get("PATH", os.defpath)
    missing = [(tool, pkg) for tool, pkg in tools.items() if shutil.which(tool, path=path) is None]
    if missing:
        names = ", ".join(tool for tool, _ in missing)
        pkgs = " ".join(sorted({pkg for _, pkg in missing}))
        raise UserError(
            f"building images needs {names}, which is not installed (not found in PATH); "
            f"install it: apt install {pkgs}"
        )


def mmdebstrap_command(
    spec: ImageSpec,
    *,
    mode: str,
    stage_dir: Path,
    out_dir: Path,
    cache_dir: Path,
    compression: str,
    python: str = sys.executable,
) -> list[str]:
    """The one mmdebstrap invocation that builds the image into ``out_dir``."""
    q = shlex.quote
    command = [
        "mmdebstrap",
        f"--mode={mode}",
        "--variant=minbase",
        "--format=null",
        "--include=" + ",".join(guest.packages(spec)),
        '--aptopt=APT::Install-Recommends "false"',
        '--aptopt=Acquire::Retries "1"',
        *(f"--dpkgopt={opt}" for opt in guest.DPKG_EXCLUDES),
        f'--setup-hook=mkdir -p {q(str(cache_dir))} "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {q(str(cache_dir))} /var/cache/apt/archives/",
        "--skip=essential/unlink",
        # The pack hook is the last step and already wrote the image (and emptied the root's
        # apt lists and /tmp); mmdebstrap's own clean-up of a root it then throws away would
        # only trip over that (it fails outright in unshare mode).
        "--skip=cleanup",
        f"--essential-hook={_DIVERT_UPDATE_INITRAMFS}",
        f"--customize-hook=sync-out /var/cache/apt/archives {q(str(cache_dir))}",
        f"--customize-hook=sync-in {q(str(stage_dir))} /",
        f'--customize-hook=chroot "$1" /bin/sh {guest.CONFIGURE_SCRIPT}',
        f'--customize-hook={q(python)} -m vmsilo.image.pack "$1" {q(str(out_dir))} '
        f"{q(compression)}",
        spec.suite,
        "/dev/null",
        spec.mirror,
    ]
    return command


def write_stage_tree(spec: ImageSpec, stage_dir: Path) -> None:
    for staged in guest.staged_files(spec):
        target = stage_dir / staged.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(staged.data)
        target.chmod(staged.mode)


# What the pack hook leaves in the output directory: files, and the icons directory of files.
PACK_OUTPUTS = (*manifest.IMAGE_FILES, "pack.json")
ICON_DIR = "icons"


def check_outputs(out_dir: Path, log: Path | None = None) -> None:
    """Refuse an output directory holding anything but the pack hook's regular files (and
    ``icons/`` of regular files). In unshare mode the directory is writable from mmdebstrap's
    namespace, where the image's own scripts ran: a symlink planted there (``vmlinuz ->
    /etc/shadow``) would be read later by whoever reads the image. Raises ``BuildError``."""
    def refuse(name: str, what: str) -> BuildError:
        return BuildError(f"the image build left {what} at {out_dir / name}, not a regular "
                          "file; the build was tampered with: build again", log)

    for entry in os.scandir(out_dir):
        if entry.name == ICON_DIR and entry.is_dir(follow_symlinks=False):
            for icon in os.scandir(entry.path):
                if not icon.is_file(follow_symlinks=False):
                    raise refuse(f"{ICON_DIR}/{icon.name}", "a link or special file")
        elif entry.name not in PACK_OUTPUTS:
            raise refuse(entry.name, "an unexpected entry")
        elif not entry.is_file(follow_symlinks=False):
            raise refuse(entry.name, "a link or special file")
    missing = [name for name in PACK_OUTPUTS if not (out_dir / name).is_file()]
    if missing:
        raise BuildError(f"the image build did not write {', '.join(missing)}", log)


# newuidmap maps mmdebstrap's namespace onto the user's subordinate ids: 65,536 of them
# (a Debian system's uids and gids) at least.
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
SUBIDS_NEEDED = 65536


def subid_count(user: str, uid: int, text: str) -> int:
    """The largest subordinate range ``user`` (or ``uid``) has in a subuid(5)/subgid(5) file:
    lines ``name-or-id:first:count``; malformed lines are skipped."""
    best = 0
    for line in text.splitlines():
        owner, _, rest = line.strip().partition(":")
        first, _, count = rest.partition(":")
        if owner in (user, str(uid)) and first.isdigit() and count.isdigit():
            best = max(best, int(count))
    return best


def check_subids(user: str, uid: int, files: tuple[Path, ...] = SUBID_FILES) -> None:
    """Fail before any work when a build without root cannot map its namespace (subuid(5)),
    naming the one command that fixes it."""
    short = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            text = ""
        if subid_count(user, uid, text) < SUBIDS_NEEDED:
            short.append(str(path))
    if short:
        raise UserError(
            f"building images without root needs {SUBIDS_NEEDED} subordinate ids for "
            f"{user} in {' and '.join(short)} (none or too few there); as root: usermod "
            f"--add-subuids 100000-165535 --add-subgids 100000-165535 {user} (pick a range "
            "no other user has), or build as root")


# Known failures, recognised in the build log, with what to do about them.
def explain_failure(log_text: str, spec: ImageSpec) -> str:
    """A plain sentence for what went wrong, from the build log (pure, for tests)."""
    if "No space left on device" in log_text:
        return "the disk is full (No space left on device); free some space and build again"
    unknown = re.findall(r"E: Unable to locate package (\S+)", log_text)
    unknown += re.findall(r"E: Package '([^']+)' has no installation candidate", log_text)
    if unknown:
        names = ", ".join(sorted(set(unknown)))
        return (
            f"guestPrograms: no package named {names} in Debian {spec.suite} "
            f"({spec.mirror}); check the spelling at https://packages.debian.org"
        )
    if re.search(
        r"(Could not connect to|Failed to fetch|Temporary failure resolving|"
        r"Unable to connect to|Connection refused|Could not resolve|"
        r"does not have a Release file|Unable to fetch some archives)",
        log_text,
    ):
        return (
            f"cannot download from the mirror {spec.mirror}: check the network, or set "
            "image.mirror to a reachable Debian mirror"
        )
    match = re.search(r"vmsilo-build: guestConfig command (\d+) failed", log_text)
    if match:
        return f"guestConfig command {match.group(1)} failed inside the image (see its output)"
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith(("vmsilo-pack:", "vmsilo-build:"))]
    errors = [line for line in lines if line.startswith("E: ")]
    tail = ours[-1:] or errors[:2] or lines[-2:]
    return "the image build failed: " + (" / ".join(tail) if tail else "no output")


def _run_logged(
    command: list[str], log: Path, env: Mapping[str, str], on_stage: StageCallback
) -> int:
    """Run ``command`` with its output appended to ``log``, reporting ``vmsilo-stage:`` lines."""
    child = proc.spawn(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, new_session=False
    )
    assert child.stdout is not None
    with open(log, "ab", buffering=0) as sink:
        for raw in child.stdout:
            try:
                sink.write(raw)
            except OSError as exc:
                # A full disk must not stop us reading: the child would block on the pipe.
                if exc.errno != errno.ENOSPC:
                    raise
            line = raw.decode(errors="replace").strip()
            if line.startswith("vmsilo-stage: "):
                on_stage(line.removeprefix("vmsilo-stage: "))
    return child.wait()


def build_image(
    spec: ImageSpec,
    paths: Paths,
    *,
    on_stage: StageCallback = lambda _stage: None,
    compression: str = DEFAULT_COMPRESSION,
    force: bool = False,
) -> BuildResult:
    """Build the image of ``spec`` unless an image with its digest exists already."""
    spec = spec.normalized()
    spec.validate()
    digest = spec.digest()
    final = paths.image(digest)
    if (final / manifest.MANIFEST).exists() and not force:
        return BuildResult(digest, final, True, 0.0)

    mode = "root" if os.geteuid() == 0 else "unshare"
    check_tools(unshare=mode == "unshare")
    if mode == "unshare":
        import pwd

        check_subids(pwd.getpwuid(os.geteuid()).pw_name, os.geteuid())
    started = time.monotonic()
    log = log_path(paths, digest)
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        apt_cache_dir(paths).mkdir(parents=True, exist_ok=True)
        log.write_text(f"vmsilo image build {digest} started {_now()}\n")
        work = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=paths.image_dir))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise BuildError("the disk is full (No space left on device)", None) from exc
        raise UserError(f"cannot create the image directory {paths.image_dir}: {exc}") from exc

    try:
        out_dir = work / "image"
        stage_dir = work / "stage"
        tmp_dir = work / "tmp"
        for directory in (out_dir, stage_dir, tmp_dir):
            directory.mkdir()
        if mode == "unshare":
            # mmdebstrap's root inside the user namespace is one of our subordinate uids on
            # the outside: it must be able to enter the work dir, build in tmp/ and write the
            # packed image to image/ (which we tighten again before the rename).
            work.chmod(0o1777)
            tmp_dir.chmod(0o1777)
            out_dir.chmod(0o1777)
        write_stage_tree(spec, stage_dir)
        command = mmdebstrap_command(
            spec,
            mode=mode,
            stage_dir=stage_dir,
            out_dir=out_dir,
            cache_dir=apt_cache_dir(paths),
            compression=compression,
        )
        with open(log, "a") as sink:
            sink.write("$ " + shlex.join(command) + "\n")
        on_stage("bootstrap")
        # mmdebstrap builds the root in TMPDIR: inside our work dir, so that it lands on the
        # image's filesystem and is removed with it.
        status = _run_logged(command, log, {"TMPDIR": str(tmp_dir)}, on_stage)
        if status != 0:
            raise BuildError(explain_failure(_read_log(log), spec), log)
        check_outputs(out_dir, log)
        pack_info = json.loads((out_dir / "pack.json").read_text())
        (out_dir / "pack.json").unlink()
        seconds = time.monotonic() - started
        manifest.write(
            out_dir,
            manifest.assemble(
                spec,
                pack_info,
                out_dir,
                built_at=_now(),
                build_seconds=seconds,
                compression=compression,
            ),
        )
        if final.exists():
            shutil.rmtree(final)
        out_dir.chmod(0o755)  # no longer shared with mmdebstrap's namespace (unshare mode)
        out_dir.rename(final)
        return BuildResult(digest, final, False, seconds)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise BuildError("the disk is full (No space left on device)", log) from exc
        raise BuildError(f"the image build failed: {exc}", log) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read_log(log: Path) -> str:
    try:
        return log.read_text(errors="replace")
    except OSError:
        return ""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
