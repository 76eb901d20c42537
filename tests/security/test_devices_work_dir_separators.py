"""Issue 9 item 18: a work_dir containing ``;`` or ``:`` broke the runner's library path.

The bundle runs as ``./ld-linux-aarch64.so.1 --library-path DIR ./edgerun-runner``, where ``:``
and ``;`` separate directories: a work_dir ``/data/a:/evil`` makes the loader search ``/evil`` for
the runner's libc. Such a work_dir is refused with a clear error, from a URI or an inventory.
"""

from __future__ import annotations

import pytest

from edgerun.devices import InventoryError, get_spec, load_inventory


@pytest.mark.parametrize("work_dir", ["/data/a:/evil", "/data/a;b", "/home/pi/ok\\nx"])
def test_a_work_dir_with_a_separator_is_refused_from_a_uri(work_dir):
    """Stops: the loader searching a directory chosen by whoever named the work dir."""
    with pytest.raises(InventoryError) as ei:
        get_spec(f"local://?work_dir={work_dir.replace(chr(92) + 'n', '%0A')}")
    assert "work_dir" in ei.value.message and "choose another directory" in ei.value.message


def test_a_work_dir_with_a_separator_in_the_inventory_names_the_entry(tmp_path):
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.pi5]\nuri = "ssh://pi@pi5.lan"\nwork_dir = "/home/pi/a:b"\n')
    with pytest.raises(InventoryError) as ei:
        load_inventory(inv)
    msg = ei.value.message
    assert str(inv) in msg and "entry 'pi5'" in msg and "':'" in msg and "library path" in msg
