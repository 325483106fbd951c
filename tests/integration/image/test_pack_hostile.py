"""The whole pack hook (``python -m vmsilo.image.pack``, as the build runs it: as root, with
mkfs.erofs and a bind mount) over a hostile image root: absolute symlinks to host canaries
where it reads desktop entries, the kernel, modules, and where it empties and truncates; and
the host's /proc mounted inside the root, as mmdebstrap has it while hooks run. Issue 15 (18).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.hostile_image import HOST_SECRET, IMAGE_TEXT, hostile_image

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mkfs.erofs") is None or shutil.which("unshare") is None,
    reason="the pack hook mounts and runs mkfs.erofs (root, erofs-utils, util-linux)")


def run_pack(root: Path, outdir: Path) -> subprocess.CompletedProcess[str]:
    # A private mount namespace: /proc is bound into the root as mmdebstrap does, and goes
    # away with the namespace. The canary is in the hook's own environment, which
    # /proc/self/environ would show.
    script = 'mount --bind /proc "$1/proc" && exec "$2" -m vmsilo.image.pack "$1" "$3" none'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(root), sys.executable, str(outdir)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "VMSILO_CANARY": HOST_SECRET})


def test_the_pack_hook_stays_inside_the_image_root(tmp_path: Path) -> None:
    with hostile_image(tmp_path) as bad:
        apps = bad.root / "usr/share/applications"
        (apps / "environ.desktop").symlink_to("/proc/self/environ")
        (apps / "init.desktop").symlink_to("/proc/1/environ")
        outdir = tmp_path / "out"
        outdir.mkdir()
        done = run_pack(bad.root, outdir)
        assert done.returncode == 0, done.stdout + done.stderr
        bad.assert_host_untouched()

        info = json.loads((outdir / "pack.json").read_text())
        entries = {e["file"]: e["text"] for e in info["desktopEntries"]}
        assert entries["evil.desktop"] == f"[Desktop Entry]\nName={IMAGE_TEXT}\n"
        # the host's /proc inside the root is another filesystem: never read
        assert "environ.desktop" not in entries and "init.desktop" not in entries
        for name in ("pack.json", "vmlinuz", "initrd.img", "rootfs.erofs"):
            assert HOST_SECRET.encode() not in (outdir / name).read_bytes(), name
        assert (outdir / "vmlinuz").read_bytes() == b"image kernel"
        assert (bad.root / "etc/machine-id").read_bytes() == b""
        for rel in ("var/cache/apt/archives", "var/lib/apt/lists", "tmp"):
            assert not os.path.lexists(bad.root / rel), rel
