"""Which kernel modules to load, in which order: resolved from ``modules.dep``.

``modules.dep`` maps each module's path to the paths of the modules it needs;
``modules.builtin`` lists modules compiled into the kernel, which need no loading;
``modules.softdep`` names modules to load before another one ("pre:"), often by an alias
from ``modules.alias`` (``ext4`` wants ``crypto-crc32c`` loaded first). A request for
``ext4`` becomes the list of module files to ``insmod`` with every dependency before its
users. Soft dependencies are optional: each candidate is marked so that a failure to load it
(a CPU without the instructions crc32c_intel needs) does not stop the boot. Pure: the caller
reads the files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


class ModuleError(ValueError):
    """A wanted module does not exist, or the dependency data is inconsistent."""


def module_name(path: str) -> str:
    """``kernel/fs/ext4/ext4.ko.xz`` -> ``ext4``; ``-`` and ``_`` are the same to the kernel."""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """The parsed ``modules.dep`` and ``modules.builtin`` of one kernel."""

    paths: dict[str, str]
    depends: dict[str, tuple[str, ...]]
    builtin: frozenset[str]
    soft_pre: dict[str, tuple[str, ...]] = field(default_factory=dict)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(
        cls,
        modules_dep: str,
        modules_builtin: str = "",
        modules_softdep: str = "",
        modules_alias: str = "",
    ) -> ModuleIndex:
        paths: dict[str, str] = {}
        depends: dict[str, tuple[str, ...]] = {}
        for number, line in enumerate(modules_dep.splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            path, sep, rest = line.partition(":")
            if not sep:
                raise ModuleError(f"modules.dep line {number}: no ':' in {line!r}")
            name = module_name(path.strip())
            paths[name] = path.strip()
            depends[name] = tuple(module_name(dep) for dep in rest.split())
        builtin = frozenset(
            module_name(line.strip()) for line in modules_builtin.splitlines() if line.strip()
        )
        soft_pre: dict[str, tuple[str, ...]] = {}
        for line in modules_softdep.splitlines():
            words = line.split()
            if len(words) < 3 or words[0] != "softdep":
                continue
            pre: list[str] = []
            section = ""
            for word in words[2:]:
                if word.endswith(":"):
                    section = word
                elif section == "pre:":
                    pre.append(word)
            if pre:
                name = module_name(words[1])
                soft_pre[name] = (*soft_pre.get(name, ()), *pre)
        aliases: dict[str, list[str]] = {}
        for line in modules_alias.splitlines():
            words = line.split()
            # Only plain names: the wildcard device aliases are for udev, not for us.
            if len(words) == 3 and words[0] == "alias" and not any(c in words[1] for c in "*?["):
                aliases.setdefault(words[1], []).append(module_name(words[2]))
        return cls(paths, depends, builtin, soft_pre, {k: tuple(v) for k, v in aliases.items()})

    def candidates(self, name_or_alias: str) -> tuple[str, ...]:
        """The modules an alias (or a plain module name) stands for, that exist here."""
        names = self.aliases.get(name_or_alias, ()) or (module_name(name_or_alias),)
        return tuple(n for n in names if n in self.paths or n in self.builtin)

    def is_builtin(self, name: str) -> bool:
        return module_name(name) in self.builtin

    def has(self, name: str) -> bool:
        name = module_name(name)
        return name in self.paths or name in self.builtin

    def load_order(self, wanted: Iterable[str]) -> list[str]:
        """Module paths to load for ``wanted``: dependencies first, each path once, builtin
        modules left out; optional ones (soft dependencies) are prefixed with ``?``. A missing
        module or a dependency cycle raises ``ModuleError``."""
        return [("?" if optional else "") + path for path, optional in self._order(wanted)]

    def _order(self, wanted: Iterable[str]) -> list[tuple[str, bool]]:
        order: list[tuple[str, bool]] = []
        done: set[str] = set()
        active: list[str] = []

        def visit(name: str, wanted_by: str | None, optional: bool) -> None:
            if name in done or name in self.builtin:
                return
            if name in active:
                cycle = " -> ".join([*active[active.index(name) :], name])
                raise ModuleError(f"module dependency cycle: {cycle}")
            if name not in self.paths:
                who = f" (needed by {wanted_by})" if wanted_by else ""
                raise ModuleError(f"kernel module {name}{who} is not in modules.dep")
            active.append(name)
            for soft in self.soft_pre.get(name, ()):
                for candidate in self.candidates(soft):
                    if candidate not in active:
                        visit(candidate, name, True)
            for dep in self.depends[name]:
                visit(dep, name, optional)
            active.pop()
            done.add(name)
            order.append((self.paths[name], optional))

        for name in wanted:
            visit(module_name(name), None, False)
        return order
