"""The error a user can act on.

STYLE: three kinds of error exist — a user error (shown as is, with the fix), a protocol
violation from a guest (connection torn down, logged with the VM's name), and a bug (logged
with its traceback). This module holds the first; protocol violations live in
``vmsilo.protocol.errors``.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix. The message says what is wrong and what to do; the CLI
    prints it without a traceback and exits with status 1."""
