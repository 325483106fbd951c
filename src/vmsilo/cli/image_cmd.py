"""``vmsilo image build|list|gc``: build the VMs' guest images, show them, remove unused ones.

Thin: the config picks the VMs and their specs, ``vmsilo.image.build`` does the work, this
module shows progress (rich) and results. A failed build prints why and the log to read, and
exits with status 1; images already built stay.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from vmsilo.cli.options import add_config_option
from vmsilo.cli.output import output_console
from vmsilo.config import load_config
from vmsilo.desktop.menu import refresh_quietly
from vmsilo.host.paths import Paths
from vmsilo.image import build, store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("image", help="build, list and clean up guest images")
    commands = parser.add_subparsers(dest="image_command", metavar="SUBCOMMAND", required=True)

    build_cmd = commands.add_parser("build", help="build the images of VMs (default: all)")
    build_cmd.add_argument("vms", nargs="*", metavar="VM", help="VM names (default: every VM)")
    build_cmd.add_argument(
        "--rebuild", action="store_true", help="build again even if the image exists"
    )
    add_config_option(build_cmd)
    build_cmd.set_defaults(func=run_build)

    list_cmd = commands.add_parser("list", help="list built images and the VMs using them")
    add_config_option(list_cmd)
    list_cmd.set_defaults(func=run_list)

    gc_cmd = commands.add_parser("gc", help="remove images that no VM of the config uses")
    add_config_option(gc_cmd)
    gc_cmd.set_defaults(func=run_gc)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def run_build(args: argparse.Namespace) -> int:
    config = load_config(args.config).config
    specs = store.specs_for_config(config, list(args.vms) or None)
    paths = Paths.for_mode()
    console = Console(stderr=True)
    users = store.users_by_digest(specs)
    by_digest = {spec.digest(): spec for spec in specs.values()}
    for digest, names in users.items():
        label = ", ".join(names)
        total = len(build.STAGES)
        console.print(f"image {digest} for {label}; log: {build.log_path(paths, digest)}")
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task(f"[0/{total}] checking", total=None)

            def on_stage(stage: str, task: TaskID = task, total: int = total) -> None:
                number = build.STAGES.index(stage) + 1 if stage in build.STAGES else "?"
                progress.update(task, description=f"[{number}/{total}] {stage}")

            result = build.build_image(
                by_digest[digest], paths, on_stage=on_stage, force=args.rebuild
            )
            progress.update(task, description="done" if not result.reused else "up to date")
        if result.reused:
            print(f"{label}: image {digest} is up to date ({result.path})")
        else:
            print(f"{label}: built image {digest} in {result.seconds:.0f} s ({result.path})")
    # The images' applications belong in the desktop menu.
    print(refresh_quietly(config))
    return 0


def run_list(args: argparse.Namespace) -> int:
    config = load_config(args.config).config
    users = store.users_by_digest(store.specs_for_config(config))
    paths = Paths.for_mode()
    images = store.list_images(paths)
    if not images:
        print(f"no images in {paths.image_dir}; build them with: vmsilo image build")
        return 0
    table = Table("digest", "VMs", "size", "built at", "kernel")
    for info in images:
        table.add_row(
            info.digest,
            ", ".join(users.get(info.digest, [])) or "(unused)",
            _human(info.size),
            info.built_at,
            info.kernel_version,
        )
    # Digests are long: never truncate them when the output is piped.
    output_console().print(table)
    missing = sorted(
        name
        for digest, names in users.items()
        for name in names
        if digest not in {i.digest for i in images}
    )
    if missing:
        print(f"not built yet: {', '.join(missing)} (vmsilo image build)", file=sys.stderr)
    return 0


def run_gc(args: argparse.Namespace) -> int:
    config = load_config(args.config).config
    keep = set(store.users_by_digest(store.specs_for_config(config)))
    removed = store.collect_garbage(Paths.for_mode(), keep)
    for item in removed:
        print(f"removed {item.path} ({_human(item.size)})")
    freed = sum(item.size for item in removed)
    print(f"freed {_human(freed)}" if removed else "nothing to remove")
    return 0
