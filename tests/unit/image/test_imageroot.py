"""ImageRoot: image paths resolved inside the image root (openat2's RESOLVE_IN_ROOT), never into
the host, over a throwaway directory standing for the image root with host canaries beside it.
Issue 15 (18): the pack hook read a host file into the manifest, emptied a host directory and
truncated a host file through absolute symlinks of the image."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsilo.image.imageroot import MAX_SYMLINKS, ImagePathError, ImageRoot

HOST_SECRET = b"host secret: never in an image\n"


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(image root, host canary directory); the canary dir also exists *inside* the root at
    the same absolute path, holding the image's own files."""
    root = tmp_path / "root"
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_bytes(HOST_SECRET)
    (host / "dir").mkdir()
    (host / "dir" / "keep").write_bytes(HOST_SECRET)
    inner = root / str(host).lstrip("/")
    inner.mkdir(parents=True)
    (inner / "secret").write_bytes(b"the image's own file\n")
    (inner / "dir").mkdir()
    (inner / "dir" / "junk").write_bytes(b"image junk")
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")  # merged /usr, as Debian's
    (root / "usr/lib/app").mkdir()
    (root / "usr/lib/app/x.png").write_bytes(b"image icon")
    return root, host


def host_untouched(host: Path) -> None:
    assert (host / "secret").read_bytes() == HOST_SECRET
    assert (host / "dir" / "keep").read_bytes() == HOST_SECRET


def test_an_absolute_link_resolves_inside_the_root(layout: tuple[Path, Path]) -> None:
    root, host = layout
    (root / "abs").symlink_to(host / "secret")
    icons = root / "usr/share/icons/hicolor/48x48/apps"
    icons.mkdir(parents=True)
    (icons / "x.png").symlink_to("/usr/lib/app/x.png")
    with ImageRoot(root) as image:
        assert image.read_bytes("abs") == b"the image's own file\n"
        assert image.read_bytes("/usr/share/icons/hicolor/48x48/apps/x.png") == b"image icon"
        assert image.resolve("usr/share/icons/hicolor/48x48/apps/x.png") == PurePosixPath(
            "/usr/lib/app/x.png")
        assert image.read_bytes("lib/app/x.png") == b"image icon"  # relative link: /usr/lib


def test_an_absolute_link_to_a_host_only_file_finds_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_bytes(HOST_SECRET)
    (root / "abs").symlink_to(tmp_path / "secret")
    (root / "dotdot").symlink_to("../../../../../../../../" + str(tmp_path / "secret"))
    (root / "etc").mkdir()
    (root / "etc/passwd-link").symlink_to("/etc/passwd")
    with ImageRoot(root) as image:
        for path in ("abs", "dotdot", "etc/passwd-link", "../secret", "/../../secret",
                     "etc/../../secret"):
            with pytest.raises(ImagePathError) as caught:
                image.read_bytes(path)
            assert caught.value.errno == errno.ENOENT, path
            assert not image.is_file(path)


def test_dotdot_stops_at_the_root_and_follows_the_walked_directories(
    layout: tuple[Path, Path],
) -> None:
    root, _host = layout
    with ImageRoot(root) as image:
        assert image.read_bytes("../../../usr/lib/app/x.png") == b"image icon"
        # lib -> usr/lib, then .. is usr (the directory walked), as the kernel does
        assert image.listdir("lib/..") == ["lib"]
        assert image.listdir("lib/../lib") == ["app"]
        assert image.listdir("..") == image.listdir("/") == sorted(os.listdir(root))
        assert image.resolve("lib/../lib/app") == PurePosixPath("/usr/lib/app")


def test_link_loops_end_in_eloop(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("/a")
    chain = root / "chain"
    chain.mkdir()
    for i in range(MAX_SYMLINKS + 1):
        (chain / f"l{i}").symlink_to(f"l{i + 1}")
    (chain / f"l{MAX_SYMLINKS + 1}").write_bytes(b"end")
    with ImageRoot(root) as image:
        with pytest.raises(ImagePathError) as caught:
            image.read_bytes("a")
        assert caught.value.errno == errno.ELOOP
        with pytest.raises(ImagePathError) as caught:
            image.read_bytes("chain/l0")
        assert caught.value.errno == errno.ELOOP
        assert image.read_bytes("chain/l1") == b"end"  # exactly 40 links is allowed


def test_reads_take_regular_files_only_and_honour_the_limit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo")  # would hang a plain open()
    (root / "dir").mkdir()
    (root / "big").write_bytes(b"x" * 100)
    with ImageRoot(root) as image:
        for path in ("fifo", "dir"):
            with pytest.raises(ImagePathError, match="not a regular file"):
                image.read_bytes(path)
        with pytest.raises(ImagePathError, match="more than the 99 allowed"):
            image.read_bytes("big", limit=99)
        assert image.read_bytes("big", limit=100) == b"x" * 100


def test_a_mount_point_inside_the_root_is_not_crossed(tmp_path: Path) -> None:
    """/dev/shm is another filesystem than tmp_path's here; mmdebstrap mounts the host's
    /proc, /sys and device nodes in the root the same way."""
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to stand for a mount point")
    root = tmp_path / "root"
    root.mkdir()
    # A directory on another filesystem cannot be placed in the root without a mount; a
    # directory *given* as the root's own child by path is: open the root's parent instead.
    (root / "shm").symlink_to(other)  # absolute: resolved inside the root, finds nothing
    with ImageRoot(root) as image:
        assert not image.is_dir("shm")
    with ImageRoot(Path("/dev")) as devroot:
        with pytest.raises(ImagePathError) as caught:
            devroot.listdir("shm")
        assert caught.value.errno == errno.EXDEV


def test_cleaning_never_follows_the_last_link(layout: tuple[Path, Path]) -> None:
    root, host = layout
    (root / "var/cache/apt").mkdir(parents=True)
    (root / "var/cache/apt/archives").symlink_to(host / "dir")
    (root / "scratch").symlink_to(host / "dir")
    (root / "etc").mkdir()
    (root / "etc/machine-id").symlink_to(host / "secret")
    (root / "cache").symlink_to("/var/cache")  # a parent that is a link is followed inside
    with ImageRoot(root) as image:
        image.clean_dir("var/cache/apt/archives")
        image.clean_dir("scratch")
        image.write_empty("etc/machine-id")
        image.remove("cache/apt")
    host_untouched(host)
    inner = root / str(host).lstrip("/")
    assert (inner / "dir" / "junk").exists()  # the link was removed, not its image target
    assert not (root / "scratch").is_symlink() and not (root / "scratch").exists()
    machine_id = root / "etc/machine-id"
    assert not machine_id.is_symlink() and machine_id.read_bytes() == b""
    assert (machine_id.stat().st_mode & 0o777) == 0o444
    assert not (root / "var/cache/apt").exists()


def test_clean_dir_keeps_what_it_is_told(tmp_path: Path) -> None:
    root = tmp_path / "root"
    cache = root / "var/cache/apt/archives"
    (cache / "partial").mkdir(parents=True)
    (cache / "partial" / "x.deb").write_bytes(b"")
    (cache / "lock").write_bytes(b"")
    (cache / "a.deb").write_bytes(b"")
    (cache / "sub").mkdir()
    (cache / "sub" / "link").symlink_to("/")
    with ImageRoot(root) as image:
        image.clean_dir("var/cache/apt/archives",
                        keep=lambda name, is_dir: name == ("partial" if is_dir else "lock"))
        image.clean_dir("missing/dir")
    assert sorted(p.name for p in cache.iterdir()) == ["lock", "partial"]


def test_copy_out_writes_the_image_file(layout: tuple[Path, Path], tmp_path: Path) -> None:
    root, host = layout
    (root / "boot").mkdir()
    (root / "boot/vmlinuz-6.1").symlink_to(host / "secret")
    with ImageRoot(root) as image:
        image.copy_out("boot/vmlinuz-6.1", tmp_path / "vmlinuz")
    assert (tmp_path / "vmlinuz").read_bytes() == b"the image's own file\n"


# --- the kernel as the oracle: openat2(2) with RESOLVE_IN_ROOT ---------------------------------

def _openat2_in_root(root_fd: int, path: str) -> int:
    """openat2(root_fd, path, O_RDONLY, RESOLVE_IN_ROOT): the kernel's resolution of ``path``
    inside the root; raises OSError like open()."""
    import ctypes

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                    ("resolve", ctypes.c_uint64)]

    libc = ctypes.CDLL(None, use_errno=True)
    how = OpenHow(os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, 0, 0x10)  # RESOLVE_IN_ROOT
    fd = libc.syscall(437, root_fd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def _kernel_read(root: Path, path: str) -> bytes | None:
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _openat2_in_root(root_fd, path)
    except OSError:
        return None
    finally:
        os.close(root_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _ours(image: ImageRoot, path: str) -> bytes | None:
    try:
        return image.read_bytes(path)
    except OSError:
        return None


NAMES = ["a", "b", "f", "l", "m"]
TARGETS = ["/", ".", "..", "/a", "a", "../a", "/a/f", "a/f", "../../f", "/../b/l", "l",
           "/l", "m/f", "/b/../a/l", "f", "/outside", "../../../outside"]


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """(directory, name, kind:payload) entries: files, directories and symlinks."""
    entries = []
    for directory in ("", "a", "b"):
        for name in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4)):
            if f"{directory}/{name}".strip("/") in ("a", "b"):
                continue  # a and b are the directories
            kind = draw(st.sampled_from(["file", "link"]))
            payload = (f"{directory}/{name}" if kind == "file"
                       else draw(st.sampled_from(TARGETS)))
            entries.append((directory, name, f"{kind}:{payload}"))
    return entries


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees(), queries=st.lists(
    st.lists(st.sampled_from([*NAMES, "..", ".", "", "outside"]), min_size=1, max_size=4)
    .map("/".join), min_size=1, max_size=8))
def test_resolution_matches_the_kernel_s_resolve_in_root(
    tmp_path: Path, tree: list[tuple[str, str, str]], queries: list[str],
) -> None:
    """Whatever links the image holds, ImageRoot reads exactly the file openat2(2) with
    RESOLVE_IN_ROOT opens (or fails where it fails); a file outside the root is never read."""
    import tempfile

    base = Path(tempfile.mkdtemp(dir=tmp_path))
    (base / "outside").write_bytes(b"OUTSIDE")
    root = base / "root"
    for d in ("a", "b"):
        (root / d).mkdir(parents=True)
    for directory, name, spec in tree:
        kind, payload = spec.split(":", 1)
        path = root / directory / name
        if kind == "file":
            path.write_bytes(payload.encode())
        else:
            path.symlink_to(payload)
    with ImageRoot(root) as image:
        for query in queries:
            for path in (query, "/" + query):
                ours = _ours(image, path)
                assert ours == _kernel_read(root, path), (path, tree)
                assert ours != b"OUTSIDE"
