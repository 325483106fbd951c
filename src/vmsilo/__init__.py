"""vmsilo: Qubes-style compartmentalization for ordinary Linux desktops.

The package holds the host side (configuration, daemon, hypervisor backends, networking,
desktop integration) and the guest side (agent), which share the wire formats in
``vmsilo.protocol``. Importing it has no side effects.
"""

__version__ = "0.1.0"
