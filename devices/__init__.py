"""Where programs run: one small :class:`Device` interface, one class per transport.

>>> with resolve_device("qemu-aarch64://?cpu=cortex-a76") as dev:
...     files = sync_files(dev, [bundle / "prog", ...])
...     result = dev.exec(["./prog"], timeout=60, cwd=files.dest)

This room never knows what the files it moves mean.
"""

from edgerun.devices.base import (Device, DeviceAuthError, DeviceError, DeviceInfo, DeviceTimeout,
                                  DeviceUnreachable, ExecResult, NoSpaceError, TransportDropped)
from edgerun.devices.inventory import (DeviceSpec, InventoryError, get_spec, get_specs, load_inventory, make_device,
                                       parse_uri, resolve_device)
from edgerun.devices.sync import SyncResult, sync_files

__all__ = [
    "Device", "DeviceInfo", "ExecResult", "DeviceSpec",
    "DeviceError", "DeviceUnreachable", "DeviceAuthError", "DeviceTimeout", "TransportDropped",
    "NoSpaceError", "InventoryError",
    "resolve_device", "make_device", "get_spec", "get_specs", "load_inventory", "parse_uri", "sync_files", "SyncResult",
]
