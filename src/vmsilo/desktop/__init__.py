"""Desktop integration: guest applications in the host menu, marked with their VM."""
