"""sysextpy: merge systemd system and configuration extensions from the initrd."""

__version__ = "0.1.0"
