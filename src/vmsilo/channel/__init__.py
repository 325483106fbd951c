"""Byte streams between host and guest, whatever carries them.

The host asks a ``Transport`` for a stream to a guest port; a stream is a byte pipe with
backpressure, half-close and close. Three transports exist: kernel vsock, cloud-hypervisor's
hybrid vsock (a unix socket with a ``CONNECT`` handshake) and our virtio-serial multiplexer.
The guest half (``stream``, ``mux``, ``guest_ports``) uses the standard library only, because
the guest agent imports it.
"""
