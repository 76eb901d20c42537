"""Issue 9 item 17: misleading trust messages.

* A *changed* host key read like an unknown one, with a hint to accept new keys -- advice that
  walks a user into a man-in-the-middle. Now it says the key changed and why that matters, and
  never suggests ``accept_new_host_key`` (which does not accept a changed key anyway).
* An inventory entry named ``local`` silently replaced the built-in local device, so
  ``--device local`` could run somewhere else. Now it is refused.

Against a real sshd on loopback whose known_hosts line holds another key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerun.devices import DeviceAuthError, InventoryError, load_inventory, resolve_device





@pytest.mark.parametrize("accept_new", ["false", "true"])
def test_a_changed_host_key_says_possible_man_in_the_middle(sshd, tmp_path, accept_new):
    """Stops: a user "fixing" a changed key by opting in to trust-on-first-use."""
    kh = tmp_path / "known_hosts"
    other = Path(str(sshd.other_key) + ".pub").read_text().split()[:2]
    kh.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other)}\n")
    with resolve_device(sshd.uri(known_hosts=str(kh), accept_new_host_key=accept_new, connect_retries="0",
                                 work_dir=str(tmp_path / "wd"))) as dev:
        with pytest.raises(DeviceAuthError) as ei:
            dev.exec(["true"], timeout=10)
    err = ei.value
    assert f"the host key for 127.0.0.1:{sshd.port} changed" in err.message
    assert "possible man-in-the-middle" in err.message
    assert "accept_new_host_key = true" not in err.hint and "never accepts a changed key" in err.hint
    assert kh.read_text().split()[1:] == other  # nothing rewrote the user's known_hosts


def test_an_inventory_entry_named_local_is_refused(tmp_path):
    """Stops: ``--device local`` silently meaning a remote machine someone put in the inventory."""
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.local]\nuri = "ssh://someone@elsewhere"\n')
    with pytest.raises(InventoryError) as ei:
        load_inventory(inv)
    assert str(inv) in ei.value.message and "'local'" in ei.value.message and "built-in" in ei.value.message
