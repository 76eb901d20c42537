"""Issue 9 item 2: the device's blob store was trusted by name.

``sync_files`` skipped a blob when ``WORK_DIR/blobs/<sha256>`` merely existed, and the default
remote work dir was a shared ``/tmp/edgerun`` any local user could create first. So another user of
a board (or anything that could write there) could plant a file under the name of the runner's
hash, and the next deploy would run *their* program. These tests plant exactly that and check
edgerun verifies what it skips, re-pushes what does not match, and refuses a work dir others can
write. All against real devices: this machine, and a real sshd on loopback.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from edgerun.devices import DeviceError, make_device, parse_uri, resolve_device, sync_files
from edgerun.devices.sync import sha256_file






@pytest.fixture
def program(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    prog = src / "run.sh"
    prog.write_text("#!/bin/sh\necho genuine\n")
    prog.chmod(0o755)
    return prog


def _plant(work_dir: Path, prog: Path, body: str = "#!/bin/sh\necho planted\n") -> Path:
    """What an attacker does: put other bytes under the blob name of ``prog``."""
    blobs = work_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    fake = blobs / (sha256_file(prog) + ".x")
    fake.write_text(body)
    fake.chmod(0o755)
    return fake


def test_a_planted_blob_is_detected_by_sha256_and_replaced_on_a_local_device(tmp_path, program):
    """Stops: a blob planted under the runner's hash being run instead of the runner."""
    wd = tmp_path / "wd"
    with resolve_device(f"local://?work_dir={wd}") as dev:
        sync_files(dev, [program])          # the work dir is edgerun's now
        _plant(wd, program)
        again = sync_files(dev, [program])
        res = dev.exec(["./run.sh"], timeout=10, cwd=again.dest)
    assert again.replaced == ["run.sh"] and again.pushed == ["run.sh"] and again.skipped == []
    assert again.verified_by == "sha256"
    assert res.stdout == b"genuine\n"


def test_a_planted_blob_is_replaced_over_ssh(sshd, tmp_path, program):
    """Stops: the same plant on a remote board (sha256sum on the device decides)."""
    wd = tmp_path / "remote"
    with resolve_device(sshd.uri(work_dir=str(wd))) as dev:
        sync_files(dev, [program])
        _plant(wd, program)
        again = sync_files(dev, [program])
        res = dev.exec(["./run.sh"], timeout=20, cwd=again.dest)
    assert again.replaced == ["run.sh"] and again.verified_by == "sha256"
    assert res.stdout == b"genuine\n"


def test_without_sha256sum_size_and_cksum_decide_and_say_so(tmp_path, program):
    """Stops: a plant on a device without sha256sum (busybox boards): size + POSIX cksum check it.

    The device's PATH holds only real tools -- sh, cksum, mkdir, ln, ls, cat, id, rm -- and no sha256sum.
    """
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("sh", "cksum", "mkdir", "ln", "ls", "cat", "id", "rm", "dirname"):
        path = shutil.which(tool)
        if path is None:
            pytest.skip(f"{tool} not installed")
        os.symlink(path, bindir / tool)
    wd = tmp_path / "wd"
    spec = parse_uri(f"local://?work_dir={wd}", name="no-sha256sum", options={"env": {"PATH": str(bindir)}})
    with make_device(spec) as dev:
        first = sync_files(dev, [program])
        same = sync_files(dev, [program])
        _plant(wd, program, body="#!/bin/sh\necho planted\n" + "#" * 40)
        again = sync_files(dev, [program])
    assert first.pushed == ["run.sh"] and first.verified_by is None  # nothing was there to check
    assert same.skipped == ["run.sh"] and same.verified_by == "size+cksum"
    assert again.replaced == ["run.sh"] and again.verified_by == "size+cksum"
    blob = Path(again.paths["run.sh"]).resolve()
    assert blob.read_bytes() == program.read_bytes()


def test_a_work_dir_others_can_write_is_refused_before_anything_is_pushed(tmp_path, program):
    """Stops: deploying into a shared, world-writable directory (the old /tmp/edgerun)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with resolve_device(f"local://?work_dir={shared}") as dev:
        with pytest.raises(DeviceError) as ei:
            sync_files(dev, [program])
    assert "writable by group or others" in ei.value.message and str(shared) in ei.value.message
    assert ei.value.exit_code == 8
    assert list(shared.iterdir()) == []


def test_the_default_remote_work_dir_is_private_to_the_user(sshd, tmp_path, program):
    """Stops: a default work dir in a shared /tmp that another user creates (and owns) first."""
    with resolve_device(sshd.uri(cleanup="true")) as dev:
        wd = dev.work_dir
        synced = sync_files(dev, [program])
        mode = stat.S_IMODE(os.stat(wd).st_mode)
        owner = os.stat(wd).st_uid
        assert dev.exec(["./run.sh"], timeout=20, cwd=synced.dest).stdout == b"genuine\n"
    assert wd != "/tmp/edgerun" and not wd.startswith("/tmp/edgerun/")
    assert wd in (os.path.expanduser("~/.cache/edgerun"), f"/tmp/edgerun-{os.getuid()}")
    assert owner == os.getuid() and mode & 0o022 == 0
