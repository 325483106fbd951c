"""Protocol violations: the one family of "the peer (a guest) sent garbage".

A ``ProtocolError`` means the peer sent something the wire format or its policy does not
allow. Every decoder of guest input raises a subclass of it (the mux's, the exec protocol's,
the D-Bus proxy's ``ProtocolViolation``, the Wayland filter's ``WireError`` and
``ViolationError``, the kernel-word codecs' ``NetParamError`` and ``ShareParamError``, the
balloon drivers' ``VmmReplyError``, the stream broker's), so "the guest sent garbage" is
handled the same way everywhere: the caller tears down that stream (or, for
``MuxConnectionError``, the whole connection) and logs it once with the VM's name; it never
logs and carries on. Stdlib only: guest code uses it too.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer violated the wire format; the stream it came on must be torn down."""


class MuxConnectionError(ProtocolError):
    """The multiplexer's framing itself is broken; the whole connection must be torn down."""
