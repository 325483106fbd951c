"""Protocol violations.

A ``ProtocolError`` means the peer sent something the wire format does not allow. The caller
tears down the stream (or, for ``MuxConnectionError``, the whole connection) and logs it with
the VM's name; it never logs and carries on.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer violated the wire format; the stream it came on must be torn down."""


class MuxConnectionError(ProtocolError):
    """The multiplexer's framing itself is broken; the whole connection must be torn down."""
