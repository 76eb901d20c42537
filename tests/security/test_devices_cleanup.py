"""Issue 9 item 3: ``cleanup=true`` deleted outside its directory.

``removable()`` counted slashes without normalising, so ``work_dir=/x/wd/..&cleanup=true`` passed
as three levels deep and ``close()`` wiped ``/x``; and any existing directory named as work_dir
was removed whole, though edgerun never created it. Now a work_dir with ``.``/``..`` is refused
when the device is named, and cleanup removes only a directory that carries edgerun's marker.
Real devices: this machine and a real sshd on loopback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerun.devices import InventoryError, get_spec, load_inventory, resolve_device, sync_files
from edgerun.devices.workdir import MARKER





@pytest.fixture
def precious(tmp_path) -> Path:
    """A directory of the user's that must survive: /x in the issue."""
    x = tmp_path / "x"
    (x / "wd").mkdir(parents=True)
    (x / "thesis.tex").write_text("years of work")
    return x


def test_a_dotdot_work_dir_is_refused_before_any_device_exists(precious):
    """Stops: ``work_dir=/x/wd/..&cleanup=true`` wiping /x on close."""
    with pytest.raises(InventoryError) as ei:
        get_spec(f"local://?work_dir={precious}/wd/..&cleanup=true")
    assert "'..'" in ei.value.message and ei.value.exit_code == 2
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_a_dotdot_work_dir_in_the_inventory_names_the_entry(tmp_path, precious):
    inv = tmp_path / "devices.toml"
    inv.write_text(f'[devices.pi]\nuri = "ssh://pi@h"\nwork_dir = "{precious}/wd/.."\ncleanup = true\n')
    with pytest.raises(InventoryError) as ei:
        load_inventory(inv)
    assert str(inv) in ei.value.message and "entry 'pi'" in ei.value.message and "'..'" in ei.value.message


def test_cleanup_leaves_a_directory_edgerun_did_not_create_locally(precious):
    """Stops: cleanup=true removing an existing directory of the user's that was named as work_dir."""
    src = precious.parent / "f.bin"
    src.write_bytes(b"data")
    with resolve_device(f"local://?work_dir={precious}&cleanup=true") as dev:
        sync_files(dev, [src])
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert (precious / "blobs").is_dir()  # what edgerun put there stays too: it cannot tell it apart safely


def test_cleanup_removes_the_work_dir_edgerun_created_locally(tmp_path):
    wd = tmp_path / "scratch" / "wd"
    src = tmp_path / "f.bin"
    src.write_bytes(b"data")
    with resolve_device(f"local://?work_dir={wd}&cleanup=true") as dev:
        sync_files(dev, [src])
        assert (wd / MARKER).is_file()
    assert not wd.exists() and wd.parent.is_dir()


def test_cleanup_over_ssh_leaves_a_directory_edgerun_did_not_create(sshd, precious):
    """Stops: the same over ssh (``rm -rf`` on the board runs only where the marker is)."""
    src = precious.parent / "f.bin"
    src.write_bytes(b"data")
    with resolve_device(sshd.uri(work_dir=str(precious), cleanup="true")) as dev:
        sync_files(dev, [src])
    assert (precious / "thesis.tex").read_text() == "years of work"
