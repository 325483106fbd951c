"""The guest agent (``vmsilo-agent``): runs in every guest, serves port 5000 (exec, idle
report, poweroff) and forwards the host's streams for other ports to guest services.

Everything this package imports is standard library or ``vmsilo`` guest code, because it is
copied into the guest image and run by the guest's own python3.
"""
