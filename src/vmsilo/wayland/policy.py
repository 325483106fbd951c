"""What a VM may ask of the host compositor, and how its windows are marked.

Only the globals below are offered to a VM, each up to the version we vouch for (the
compositor's and the installed XML's versions cap it further). Everything else is hidden —
notably screen capture (wlr-screencopy, ext-image-copy-capture, wlr-export-dmabuf), clipboard
managers (wlr/ext data-control), virtual keyboards and pointers, input methods and input panels,
layer shell (a VM could draw a fake panel or lock screen over everything), session lock, idle
notification (reads the user's activity), foreign-toplevel lists (read other clients' windows),
keyboard-shortcut inhibitors and Xwayland keyboard grabs (take the host's shortcuts), DRM leases,
output management and gamma, xdg-foreign (attach to other clients' windows), security-context
itself, and every compositor-private protocol. linux-dmabuf is hidden too: the portable path
carries pixels in shared memory, and importing guest-made GPU buffers is a driver attack surface.
"""

from __future__ import annotations

import re

from vmsilo.protocol.text import clean_display_text

# interface -> highest version offered (as of the protocols this was written against).
ALLOWED_GLOBALS: dict[str, int] = {
    # core
    "wl_compositor": 6,
    "wl_subcompositor": 1,
    "wl_shm": 2,
    "wl_seat": 9,
    "wl_output": 4,
    # clipboard and drag-and-drop: as on any Wayland desktop, only the focused window is
    # offered the selection (upstream shares the clipboard the same way)
    "wl_data_device_manager": 3,
    "zwp_primary_selection_device_manager_v1": 1,
    # windows
    "xdg_wm_base": 6,
    "zxdg_decoration_manager_v1": 1,
    "xdg_activation_v1": 1,
    # drawing and timing
    "wp_viewporter": 1,
    "wp_presentation": 1,
    "wp_fractional_scale_manager_v1": 1,
    "wp_single_pixel_buffer_manager_v1": 1,
    "wp_content_type_manager_v1": 1,
    "zxdg_output_manager_v1": 3,
    # input the window receives while focused
    "zwp_relative_pointer_manager_v1": 1,
    "zwp_pointer_constraints_v1": 1,
    "zwp_pointer_gestures_v1": 3,
    "zwp_text_input_manager_v3": 1,
    "zwp_tablet_manager_v2": 1,
    "zwp_idle_inhibit_manager_v1": 1,
}

MAX_TITLE_BYTES = 1024
MAX_APP_ID_BYTES = 255

_APP_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _truncate(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def window_title(vm: str, untrusted_title: str | None) -> str:
    """``[vm] title``, always: a title that already starts with some ``[name]`` keeps it after
    ours, so the true VM is the first thing shown. The title is cleaned to one visible line
    (``clean_display_text``: no line breaks, bidi or other invisible format characters) and
    the whole cut to ``MAX_TITLE_BYTES`` of UTF-8."""
    prefix = f"[{vm}]"
    title = clean_display_text(untrusted_title or "", max_len=MAX_TITLE_BYTES)
    if not title:
        return prefix
    return _truncate(f"{prefix} {title}", MAX_TITLE_BYTES)


def app_id(vm: str, untrusted_app_id: str | None) -> str:
    """``vmsilo-<vm>-<app id>``: the name vmsilo's menu entries have, so a taskbar finds the
    entry (and icon) of the VM's program, and no VM can pose as a host application. The guest's
    part is cleaned like any displayed string (``clean_display_text``: invisible characters
    go, they do not become ``_``) and then kept to ``[A-Za-z0-9._-]``."""
    base = f"vmsilo-{_APP_ID_UNSAFE.sub('_', vm)}"
    cleaned = clean_display_text(untrusted_app_id or "", max_len=MAX_APP_ID_BYTES)
    if not cleaned:
        return base
    return _truncate(f"{base}-{_APP_ID_UNSAFE.sub('_', cleaned)}", MAX_APP_ID_BYTES)


def security_context_app_id(vm: str, rgb: tuple[int, int, int]) -> str:
    """The app id given to the compositor with the VM's security context: the VM and its
    colour, for compositors that colour decorations from it."""
    r, g, b = rgb
    return f"vmsilo:{vm}:#{r:02x}{g:02x}{b:02x}"
