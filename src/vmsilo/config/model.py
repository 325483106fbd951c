"""The configuration file as pydantic models: every option of upstream's ``programs.vmsilo``,
its per-VM table and the newer options, with upstream's names (camelCase aliases), types and
defaults, plus ours (``hypervisor = "qemu"``, ``id``, ``image.*``, ``qemu.extraArgs``,
``sharedDirectories.<tag>.mountPoint``, the ``guestConfig`` TOML form).

The models check each value on its own (types, ranges, formats) and normalise upstream's older
spellings (``gpu = true``, ``sound = false``, ``rootOverlay.type = "qcow2"``, a single
``guestConfig`` table). Relations between values are checked in ``checks``; derived identities
are computed in ``derive``. Parsed sizes and durations are exposed as properties.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from vmsilo.config.colours import parse_colour
from vmsilo.config.fields import (
    AbsolutePath,
    Bdf,
    Colour,
    DebianPackage,
    Duration,
    FileMode,
    GuestMountPoint,
    IdMap,
    InterfaceName,
    IpInterface,
    Ipv4Address,
    Ipv4Interface,
    Ipv4Network,
    Ipv6Address,
    Ipv6Interface,
    Ipv6Network,
    MacAddress,
    Nameserver,
    PciPath,
    Size,
    TranslateMap,
    UnitName,
    UsbId,
    UserName,
    check_absolute_path,
)
from vmsilo.config.units import parse_duration, parse_size

LogLevel = Literal["error", "warn", "info", "debug", "trace"]
HOST_NETVM = "host"
# vsock reserves CIDs 0-2 and 0xffffffff; ids double as CIDs.
FIRST_VM_ID = 3
# Each VM also gets a block of host ids (host/ids.py), which bounds the ids.
LAST_VM_ID = 4095


class ConfigModel(BaseModel):
    """Base for every table: unknown keys are errors, TOML types are taken strictly."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True
    )


class FreeTable(BaseModel):
    """A table passed through as ``key=value`` pairs (upstream's free-form attrsets)."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)

    @model_validator(mode="after")
    def _scalar_values(self) -> FreeTable:
        for key, value in (self.model_extra or {}).items():
            if not isinstance(value, str | int | bool):
                raise ValueError(
                    f"key {key!r} has a {type(value).__name__} value; "
                    "use a string, integer or boolean"
                )
        return self

    @property
    def options(self) -> dict[str, str | int | bool]:
        """The free keys, in the order written."""
        return dict(self.model_extra or {})


class Disk(FreeTable):
    path: AbsolutePath


class PciDevice(FreeTable):
    path: PciPath


# ---------------------------------------------------------------- global options


class Nat(ConfigModel):
    enable: bool = False
    interface: str = ""


class HostNetworking(ConfigModel):
    nat: Nat = Field(default_factory=Nat)


class CrosvmGlobal(ConfigModel):
    log_level: LogLevel = "info"
    extra_args: list[str] = Field(default_factory=list)
    extra_run_args: list[str] = Field(default_factory=list)


class VmSwitch(ConfigModel):
    log_level: LogLevel = "info"
    extra_args: list[str] = Field(default_factory=list)
    buffer_size: Size = "256k"
    fq_codel_target: Duration = "5ms"
    fq_codel_interval: Duration = "100ms"
    fq_codel_limit: Size = "2m"
    fq_codel_quantum: Size = 1514

    @property
    def buffer_size_bytes(self) -> int:
        return parse_size(self.buffer_size)

    @property
    def fq_codel_limit_bytes(self) -> int:
        return parse_size(self.fq_codel_limit)

    @property
    def fq_codel_quantum_bytes(self) -> int:
        return parse_size(self.fq_codel_quantum)

    @property
    def fq_codel_target_seconds(self) -> float:
        return parse_duration(self.fq_codel_target)

    @property
    def fq_codel_interval_seconds(self) -> float:
        return parse_duration(self.fq_codel_interval)


class VmsiloTray(ConfigModel):
    log_level: LogLevel = "info"


class Balloond(ConfigModel):
    log_level: LogLevel = "info"
    poll_interval: Duration = "2s"
    critical_host_percent: int = Field(default=5, ge=0, le=100)
    critical_guest_available: Size = "256m"
    guest_available_bias: Size = "400m"
    min_poll_interval: Duration = "250ms"
    psi_ceiling: int = Field(default=25, ge=0, le=100)
    extra_args: list[str] = Field(default_factory=list)

    @property
    def poll_interval_seconds(self) -> float:
        return parse_duration(self.poll_interval)

    @property
    def min_poll_interval_seconds(self) -> float:
        return parse_duration(self.min_poll_interval)

    @property
    def critical_guest_available_bytes(self) -> int:
        return parse_size(self.critical_guest_available)

    @property
    def guest_available_bias_bytes(self) -> int:
        return parse_size(self.guest_available_bias)


class ImageSettings(ConfigModel):
    suite: str = Field(default="bookworm", pattern=r"^[a-z][a-z0-9-]*$")
    mirror: str = Field(default="http://deb.debian.org/debian", pattern=r"^(https?|file)://\S+$")


# ---------------------------------------------------------------- network


class Route(ConfigModel):
    via: Ipv4Address


class V6Route(ConfigModel):
    via: Ipv6Address


class Tap(ConfigModel):
    name: InterfaceName | None = None
    host_address: IpInterface | None = None
    bridge: InterfaceName | None = None


class VmNetwork(ConfigModel):
    name: str = Field(min_length=1)
    receive_broadcast: bool = False
    routes: list[Ipv4Network] = Field(default_factory=list)


class Interface(ConfigModel):
    type: Literal["tap", "vm-switch"] = "tap"
    mac_address: MacAddress | None = None
    tap: Tap | None = None
    vm_network: VmNetwork | None = None
    dhcp: bool = False
    addresses: list[Ipv4Interface] = Field(default_factory=list)
    routes: dict[Ipv4Network, Route] = Field(default_factory=dict)
    v6_addresses: list[Ipv6Interface] = Field(default_factory=list)
    v6_routes: dict[Ipv6Network, V6Route] = Field(default_factory=dict)


class Network(ConfigModel):
    nameservers: list[Nameserver] = Field(default_factory=list)
    interfaces: dict[str, Interface] = Field(default_factory=dict)
    netvm: str | None = Field(default=None, min_length=1)
    is_netvm: bool = False
    netvm_subnet: Ipv4Network | None = None


# ---------------------------------------------------------------- per-VM tables


class AutoShutdown(ConfigModel):
    enable: bool = False
    after: int = Field(default=60, ge=1)


class RootOverlay(ConfigModel):
    type: Literal["raw", "tmpfs", "qcow2"] = "raw"
    size: Size = "10G"

    @field_validator("type")
    @classmethod
    def _qcow2_is_raw(cls, value: str) -> str:
        # Upstream dropped qcow2 for a raw sparse file; old configs keep working.
        return "raw" if value == "qcow2" else value

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)


class Gpu(ConfigModel):
    wayland: bool = True
    opengl: bool = False
    vulkan: bool = False
    backend: Literal["vhost-device-gpu", "crosvm"] = "vhost-device-gpu"
    context_types: str | None = Field(default=None, alias="context-types")
    width: int | None = Field(default=None, ge=1, le=16384)
    height: int | None = Field(default=None, ge=1, le=16384)

    @property
    def enabled(self) -> bool:
        """Upstream: the GPU device exists when any capability is on."""
        return self.wayland or self.opengl or self.vulkan


class Sound(ConfigModel):
    playback: bool = True
    capture: bool = False

    @model_validator(mode="after")
    def _capture_implies_playback(self) -> Sound:
        if self.capture and not self.playback:
            self.playback = True
        return self


class SharedDirectory(ConfigModel):
    path: AbsolutePath
    thread_pool_size: int = Field(default=0, ge=0, le=1024)
    xattr: bool = True
    posix_acl: bool = True
    readonly: bool = False
    inode_file_handles: Literal["never", "prefer", "mandatory"] = "prefer"
    cache: Literal["auto", "always", "never", "metadata"] = "auto"
    allow_mmap: bool = False
    enable_readdirplus: bool = True
    writeback: bool = False
    allow_direct_io: bool = False
    log_level: Literal["error", "warn", "info", "debug", "trace", "off"] = "info"
    killpriv_v2: bool = True
    uid_map: IdMap | None = None
    gid_map: IdMap | None = None
    translate_uid: TranslateMap | None = None
    translate_gid: TranslateMap | None = None
    preserve_noatime: bool = False
    mount_point: GuestMountPoint | None = None


class UsbDevice(ConfigModel):
    vendor_id: UsbId
    product_id: UsbId
    serial: str | None = Field(default=None, min_length=1)


class GuestFile(ConfigModel):
    path: AbsolutePath
    content: str
    mode: FileMode = "0644"

    @field_validator("path")
    @classmethod
    def _a_file_inside_the_image(cls, value: str) -> str:
        # The image build writes it below its stage directory, as root: '..' would leave it.
        if ".." in value.split("/") or not value.strip("/"):
            raise ValueError(
                f"{value!r} does not name a file inside the guest; write an absolute path "
                "without '..', e.g. '/etc/motd'"
            )
        return value


class GuestConfigModule(ConfigModel):
    files: list[GuestFile] = Field(default_factory=list)
    commands: list[str] = Field(default_factory=list)
    enable_units: list[UnitName] = Field(default_factory=list)


class CrosvmVm(ConfigModel):
    log_level: LogLevel | None = None
    extra_args: list[str] = Field(default_factory=list)
    extra_run_args: list[str] = Field(default_factory=list)


class Dbus(ConfigModel):
    notifications: bool = True
    tray: bool = True


class Virtiofs(ConfigModel):
    disable_sandbox: bool = False
    seccomp_policy: Literal["kill", "log", "trap", "none"] = "kill"


class CloudHypervisor(ConfigModel):
    disable_sandbox: bool = False


class Qemu(ConfigModel):
    extra_args: list[str] = Field(default_factory=list)


def _require_table_or_bool(value: Any, option: str) -> None:
    if not isinstance(value, dict):
        raise ValueError(
            f"expected true, false or a table, got {type(value).__name__} {value!r}; "
            f"write {option} = true, {option} = false or a [{option}] table"
        )


class VmConfig(ConfigModel):
    name: str | None = None
    id: int | None = Field(default=None, ge=FIRST_VM_ID, le=LAST_VM_ID)
    hypervisor: Literal["qemu", "cloud-hypervisor", "crosvm"] = "qemu"
    color: Colour = "red"
    wayland_proxy: Literal["wayland-proxy-virtwl", "sommelier"] = "wayland-proxy-virtwl"
    memory: int = Field(default=1024, ge=128, le=16 * 1024 * 1024)
    cpus: int = Field(default=2, ge=1, le=255)
    network: Network = Field(default_factory=Network)
    auto_shutdown: AutoShutdown = Field(default_factory=AutoShutdown)
    auto_start: bool = False
    root_overlay: RootOverlay = Field(default_factory=RootOverlay)
    depends_on: list[str] = Field(default_factory=list)
    additional_disks: list[Disk] = Field(default_factory=list)
    root_disk: Disk | None = None
    kernel: AbsolutePath | None = None
    initramfs: AbsolutePath | None = None
    root_disk_readonly: bool = True
    copy_channel: bool = False
    shared_home: bool | str = True
    kernel_params: list[str] = Field(default_factory=list)
    gpu: Gpu = Field(default_factory=Gpu)
    sound: Sound = Field(default_factory=Sound)
    shared_directories: dict[str, SharedDirectory] = Field(default_factory=dict)
    vhost_user: list[FreeTable] = Field(default_factory=list)
    pci_devices: list[PciDevice] = Field(default_factory=list)
    usb_devices: list[UsbDevice] = Field(default_factory=list)
    guest_programs: list[DebianPackage] = Field(default_factory=list)
    guest_config: list[GuestConfigModule] = Field(default_factory=list)
    crosvm: CrosvmVm = Field(default_factory=CrosvmVm)
    dbus: Dbus = Field(default_factory=Dbus)
    virtiofs: Virtiofs = Field(default_factory=Virtiofs)
    cloud_hypervisor: CloudHypervisor = Field(
        default_factory=CloudHypervisor, alias="cloud-hypervisor"
    )
    qemu: Qemu = Field(default_factory=Qemu)

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu_switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return {"wayland": False, "opengl": False, "vulkan": False}
        _require_table_or_bool(value, "gpu")
        return value

    @field_validator("sound", mode="before")
    @classmethod
    def _sound_switch(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {"playback": value, "capture": False}
        _require_table_or_bool(value, "sound")
        return value

    @field_validator("shared_home", mode="before")
    @classmethod
    def _shared_home_form(cls, value: Any) -> Any:
        if isinstance(value, str):
            check_absolute_path(value)
        elif not isinstance(value, bool):
            raise ValueError(
                f"expected true, false or a path, got {type(value).__name__} {value!r}; "
                'write sharedHome = true, false or "/host/dir"'
            )
        return value

    @field_validator("guest_config", mode="before")
    @classmethod
    def _single_guest_config(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @property
    def colour_rgb(self) -> tuple[int, int, int]:
        return parse_colour(self.color)


class VmsiloConfig(ConfigModel):
    enable: bool = False
    user: UserName
    enable_bash_integration: bool = True
    host_networking: HostNetworking = Field(default_factory=HostNetworking)
    isolated_pci_devices: list[Bdf] = Field(default_factory=list)
    scheduler_isolation: Literal["full", "vm", "off"] = "full"
    crosvm: CrosvmGlobal = Field(default_factory=CrosvmGlobal)
    vm_switch: VmSwitch = Field(default_factory=VmSwitch, alias="vm-switch")
    vmsilo_tray: VmsiloTray = Field(default_factory=VmsiloTray, alias="vmsilo-tray")
    vmsilo_balloond: Balloond = Field(default_factory=Balloond, alias="vmsilo-balloond")
    netvm_range: Ipv4Network = "10.200.0.0/16"
    image: ImageSettings = Field(default_factory=ImageSettings)
    vms: dict[str, VmConfig] = Field(default_factory=dict)
