"""The D-Bus proxy: guest tray items and notifications on the host desktop."""
