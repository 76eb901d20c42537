"""Where programs run: one small :class:`Device` interface, one class per transport.

>>> with resolve_device("qemu-aarch64://?cpu=cortex-a76") as dev:
...     files = sync_files(dev, [bundle / "prog", ...])
...     result = dev.exec(["./prog"], timeout=60, cwd=files.dest)

``parse_device_list("a,b", all_devices=False, inventory=None)`` is the one meaning of
``--device``/``--all`` for every command. ``fake://NAME`` (:mod:`edgerun.devices.fake`) is an
in-memory test double for the layers above. This room never knows what the files it moves mean.
"""

from edgerun.core.text import sanitize_text
from edgerun.devices.base import (Device, DeviceAuthError, DeviceError, DeviceInfo, DeviceTimeout,
                                  DeviceUnreachable, ExecResult, NoSpaceError, TransportDropped)
from edgerun.devices.inventory import (InventoryError, get_spec, get_specs, load_inventory, make_device,
                                       parse_device_list, parse_uri, resolve_device)
from edgerun.devices.spec import DeviceSpec
from edgerun.devices.sync import SyncResult, sync_files

__all__ = [
    "Device", "DeviceInfo", "ExecResult", "DeviceSpec",
    "DeviceError", "DeviceUnreachable", "DeviceAuthError", "DeviceTimeout", "TransportDropped",
    "NoSpaceError", "InventoryError",
    "resolve_device", "make_device", "get_spec", "get_specs", "parse_device_list", "load_inventory", "parse_uri",
    "sync_files", "SyncResult", "sanitize_text",
]
