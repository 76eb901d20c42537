"""ssh and adb are one remote-shell device (devices/remote.py) with two clients: the exec,
connect-retry, timeout-kill and cleanup logic exists once, so the two cannot drift again."""

from __future__ import annotations

from edgerun.devices.adb import AdbDevice
from edgerun.devices.remote import RemoteShellDevice
from edgerun.devices.ssh import SshDevice


def test_ssh_and_adb_share_one_exec_connect_and_cleanup():
    for cls in (SshDevice, AdbDevice):
        assert issubclass(cls, RemoteShellDevice)
        for method in ("_exec", "connect", "_connect", "_kill_remote", "_cleanup_work_dir", "work_dir"):
            assert getattr(cls, method) is getattr(RemoteShellDevice, method), f"{cls.__name__}.{method} overridden"


def test_each_transport_keeps_only_its_own_client_argv():
    from edgerun.devices import resolve_device

    ssh = resolve_device("ssh://pi@pi5.lan:2222?work_dir=/home/pi/e")  # nothing connects until used
    argv = ssh._client_argv("echo hi")
    assert argv[0] == "ssh" and argv[-3:] == ["--", "pi5.lan", "sh -c 'echo hi'"]
    assert ["-p", "2222"] == argv[argv.index("-p"):argv.index("-p") + 2]
