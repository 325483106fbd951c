"""Shared folders: the VM's home and its ``sharedDirectories``, served by virtiofsd."""
