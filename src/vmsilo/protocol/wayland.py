"""Guest port 5003: Wayland clients of the guest reach the host.

Streams are opened by the host (as every port is), but Wayland clients appear in the guest, so
the host keeps a few streams open in advance; the guest half parks them. When a guest program
connects, the guest half takes a parked stream and sends ``CLAIM``; from then on the stream
carries that program's waypipe connection, byte for byte, and the host opens a new parked
stream. Anything else a guest sends on a parked stream ends it.
"""

PORT = 5003
CLAIM = b"C"
# Streams the host keeps parked in the guest: enough for programs starting together.
PARKED = 2
# How long a new guest program waits for a parked stream before it is refused.
CLAIM_WAIT_SECONDS = 10.0
