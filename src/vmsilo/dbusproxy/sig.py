"""D-Bus type signatures as names, for dbus-next's annotations.

dbus-next reads a method's or property's D-Bus signature from its Python annotations
(``def Title(self) -> "s"``). Written as string literals, those look like forward references
to undefined names (``s``) or broken syntax (``a(iiay)``) to every checker, which then had to
be switched off for the whole file — and with it the check that finds real undefined names.
Annotating with these constants instead (``-> sig.S``) gives dbus-next the same strings; the
modules that use them must not use ``from __future__ import annotations`` (the annotation
would then be the text ``"sig.S"``, not its value).

Signatures: D-Bus Specification, "Type System".

To checkers each name is the Python type dbus-next hands over or expects for it (``S`` is
``str``), so the methods using them are type-checked as well.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    B = bool
    I = int  # noqa: E741 - the D-Bus name of the type
    U = int
    S = str
    O = str  # noqa: E741 - the D-Bus name of the type
    V = Any
    AS = list[str]
    AI = list[int]
    HINTS = dict[str, Any]
    PIXMAPS = list[Any]
    TOOLTIP = list[Any]
    LAYOUT = list[Any]
    GROUP_PROPERTIES = list[Any]
    EVENTS = list[Any]
    AIAI = list[Any]
    UU = list[Any]
    US = list[Any]
    UI = list[Any]
    SSSS = list[str]
else:
    B = "b"
    I = "i"  # noqa: E741 - the D-Bus name of the type
    U = "u"
    S = "s"
    O = "o"  # noqa: E741 - the D-Bus name of the type
    V = "v"
    AS = "as"
    AI = "ai"
    HINTS = "a{sv}"
    PIXMAPS = "a(iiay)"
    TOOLTIP = "(sa(iiay)ss)"
    LAYOUT = "u(ia{sv}av)"
    GROUP_PROPERTIES = "a(ia{sv})"
    EVENTS = "a(isvu)"
    AIAI = "aiai"
    UU = "uu"
    US = "us"
    UI = "ui"
    SSSS = "ssss"
