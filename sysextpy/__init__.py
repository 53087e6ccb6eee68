# SPDX-License-Identifier: LGPL-2.1-or-later
"""sysextpy: merge systemd system and configuration extensions from the initrd."""

__version__ = "0.1.0"
