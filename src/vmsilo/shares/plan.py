"""Which folders a VM shares, where they come from on the host and where the guest mounts
them. Pure: a function of the resolved VM and the host paths.

``sharedHome = true`` shares ``<shared root>/<vm>`` (``/shared/<vm>``), a string shares that
path, ``false`` shares nothing (the home lives on the throw-away root). The home is mounted at
``/home/user`` under the tag ``vmsilo-home``; each ``sharedDirectories.<tag>`` under its own
tag at its ``mountPoint`` (default ``/mnt/<tag>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vmsilo.config import ResolvedVm
from vmsilo.config.checks import GUEST_HOME, HOME_TAG
from vmsilo.config.model import SharedDirectory
from vmsilo.host.paths import Paths

# The option path of each share, for error messages.
HOME_OPTION = "sharedHome"


@dataclass(frozen=True)
class Share:
    tag: str
    source: Path
    mount_point: str
    options: SharedDirectory
    option_path: str  # e.g. "vms.banking.sharedDirectories.docs"
    is_home: bool = False

    @property
    def readonly(self) -> bool:
        return self.options.readonly


def home_source(rvm: ResolvedVm, paths: Paths) -> Path | None:
    value = rvm.vm.shared_home
    if value is False:
        return None
    if value is True:
        return paths.shared_home(rvm.name)
    return Path(str(value))


def shares_for(rvm: ResolvedVm, paths: Paths) -> list[Share]:
    shares = []
    home = home_source(rvm, paths)
    if home is not None:
        shares.append(
            Share(
                tag=HOME_TAG,
                source=home,
                mount_point=GUEST_HOME,
                options=SharedDirectory(path=str(home)),
                option_path=f"vms.{rvm.name}.{HOME_OPTION}",
                is_home=True,
            )
        )
    for tag, directory in rvm.vm.shared_directories.items():
        shares.append(
            Share(
                tag=tag,
                source=Path(directory.path),
                mount_point=rvm.mount_points[tag],
                options=directory,
                option_path=f"vms.{rvm.name}.sharedDirectories.{tag}",
            )
        )
    return shares
