"""Issue 20 item 3: a user-supplied string was pasted into a shell command.

``finetune --data-on-device`` built ``sh -c "test -r '<path>'"``: a path holding ``'`` ran the rest
as commands, on this machine (local://) and on an ssh board. Every string that reaches a device now
travels as an argument (``sh -c 'test -r "$1"' sh PATH``) or through ``shlex.quote``. These tests put
shell metacharacters into every option that reaches a device -- the data directory on the device, the
work directory, the names of pushed files, remote paths of push/pull, a program's arguments -- on
``local://`` and over the real sshd on loopback, and check that the canary file a shell would create
is never created, and that the odd name still works as a name.
"""

from __future__ import annotations

import types
import uuid
import urllib.parse
from pathlib import Path

import pytest

from edgerun.core.errors import UsageError
from edgerun.devices import resolve_device
from edgerun.devices.base import DeviceError
from edgerun.devices.sync import sync_files
from edgerun.runtime.train import DATA_FILES, TrainJob, TrainRequest


def hostile_names(canary: Path | str) -> list[str]:
    """Path components a shell would read as code (each would ``touch`` ``canary``), plus the ones that
    only break naive quoting (spaces, a leading ``-``, a double quote)."""
    c = str(canary)
    return [f"q'; touch {c}; echo '", f"semi;touch {c}", f"$(touch {c})", f"`touch {c}`", f"a&&touch {c}",
            f"p|touch {c}", f"dq\"; touch {c}; \"", "two  spaces", "-rf", f"glob*?[x] > {c}"]


@pytest.fixture(params=["local", "ssh"])
def uri_for(request, tmp_path):
    """``uri_for(work_dir)``: a ``local://`` device or the real sshd on loopback with that work dir."""
    if request.param == "local":
        return lambda wd: f"local://?work_dir={urllib.parse.quote(str(wd), safe='/')}&cleanup=true"
    sshd = request.getfixturevalue("sshd")
    return lambda wd: sshd.uri(work_dir=urllib.parse.quote(str(wd), safe="/"), cleanup="true")


def _ctx(device):
    return types.SimpleNamespace(device=device, pushed={}, push=None)


def test_data_on_device_paths_are_arguments_never_shell_code(uri_for, tmp_path):
    """Stops: ``--data-on-device "/data/x'; touch CANARY; '"`` running ``touch`` (locally and over ssh)."""
    canary = tmp_path / "canary"
    with resolve_device(uri_for(tmp_path / "wd")) as dev:
        for i, name in enumerate(hostile_names(canary)):
            data = tmp_path / f"data{i}" / name
            data.mkdir(parents=True)
            for f in DATA_FILES:
                (data / f).write_bytes(b"x")
            ctx = _ctx(dev)
            TrainJob(TrainRequest(steps=1), data_on_device=str(data)).push(ctx)
            assert ctx.pushed == {f: f"{data}/{f}" for f in DATA_FILES}, name  # the odd name is found as it is
            if i == 0:  # without the held-out files: found missing, still as a name
                (data / "x_eval.npy").unlink()
                ctx = _ctx(dev)
                TrainJob(TrainRequest(steps=1), data_on_device=str(data)).push(ctx)
                assert set(ctx.pushed) == {"x_train.npy", "y_train.npy"}, name
            with pytest.raises(DeviceError, match="no readable x_train.npy"):
                TrainJob(TrainRequest(steps=1), data_on_device=str(tmp_path / "none" / name)).push(_ctx(dev))
            assert not canary.exists(), name


@pytest.mark.parametrize("path", ["/data/a\nb", "/data/a\x1b]0;t\x07", "relative/dir", "/data/../etc"])
def test_data_on_device_paths_with_controls_or_dots_are_refused_before_a_device_is_touched(path):
    with pytest.raises(UsageError, match="--data-on-device"):
        TrainJob(TrainRequest(steps=1), data_on_device=path).check(None)


def test_work_dirs_file_names_and_arguments_with_metacharacters_stay_names(uri_for, tmp_path):
    """Stops: a work dir, a pushed file's name, a remote path or a program argument with shell syntax
    being run by the device's shell (probe, prepare, sync, push, pull, exec, cleanup)."""
    canary = tmp_path / "canary"
    # a file name cannot hold '/': its canary is relative, looked for wherever a shell could have run
    rel = f"edgerun-canary-{uuid.uuid4().hex}"
    src = tmp_path / "payload.txt"
    src.write_text("payload\n")
    for i, (name, fname) in enumerate(zip(hostile_names(canary), hostile_names(rel))):
        name = name.replace(";", "&")  # a work dir may not hold ';' (the runner's library path separator)
        wd = tmp_path / f"wd{i}" / name
        with resolve_device(uri_for(wd)) as dev:
            assert dev.info().arch
            synced = sync_files(dev, {fname: src})               # a pushed file named like shell code
            remote = synced.paths[fname]
            res = dev.exec(["cat", remote], timeout=30)
            assert res.rc == 0 and res.stdout == b"payload\n", (name, res.stderr)
            res = dev.exec(["printf", "%s", name], timeout=30, cwd=synced.dest)   # an argument, and a cwd
            assert res.stdout == name.encode(), name
            dev.push(src, f"{wd}/{fname}.copy")
            dev.pull(f"{wd}/{fname}.copy", tmp_path / f"back{i}")
            assert (tmp_path / f"back{i}").read_text() == "payload\n"
        assert not wd.exists(), name                            # cleanup found and removed the odd name
        assert not canary.exists(), name
        for where in (tmp_path, wd.parent, Path.cwd(), Path.home(), Path("/tmp")):
            assert not (where / rel).exists(), (name, where)


def test_ssh_key_and_known_hosts_paths_with_percent_tokens_and_quotes_are_the_files_named(sshd, tmp_path):
    """Stops: ``%d``/``%h`` in an identity or known_hosts path being expanded by ssh (another file used),
    and a ``"`` breaking out of the quoted option value."""
    import shutil

    canary = tmp_path / "canary"
    odd = tmp_path / f"keys %d %h %% 'q' $(touch {canary})"
    odd.mkdir(parents=True)
    key, known = odd / "id %r", odd / "known %u"
    shutil.copy(sshd.client_key, key)
    key.chmod(0o600)
    shutil.copy(sshd.known_hosts, known)
    q = lambda p: urllib.parse.quote(str(p), safe="/")  # noqa: E731
    with resolve_device(sshd.uri(identity_file=q(key), known_hosts=q(known), work_dir=q(tmp_path / "wd"))) as dev:
        assert dev.exec(["printf", "ok"], timeout=30).stdout == b"ok"
    assert not canary.exists()
    bad = tmp_path / 'dq"x'
    bad.mkdir()
    shutil.copy(sshd.known_hosts, bad / "known")
    with pytest.raises(DeviceError, match="double quote"):
        with resolve_device(sshd.uri(known_hosts=q(bad / "known"), work_dir=q(tmp_path / "wd"))) as dev:
            dev.exec(["true"], timeout=30)
