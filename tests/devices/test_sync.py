"""sync_files: content-addressed deploy onto a real local device."""

from __future__ import annotations

import os

import pytest

from edgerun.devices import resolve_device, sync_files


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"alpha")
    (src / "run.sh").write_text("#!/bin/sh\ncat a.bin\n")
    (src / "run.sh").chmod(0o755)
    return src


def test_first_sync_pushes_second_skips_by_hash(tmp_path, files):
    with resolve_device(f"local://?work_dir={tmp_path}/wd") as dev:
        first = sync_files(dev, [files / "a.bin", files / "run.sh"])
        second = sync_files(dev, [files / "a.bin", files / "run.sh"])
        assert sorted(first.pushed) == ["a.bin", "run.sh"] and first.skipped == []
        assert second.pushed == [] and sorted(second.skipped) == ["a.bin", "run.sh"]
        assert second.dest == first.dest
        res = dev.exec(["./run.sh"], timeout=10, cwd=first.dest)
    assert res.stdout == b"alpha"


def test_changed_content_is_pushed_and_gets_a_new_dir(tmp_path, files):
    with resolve_device(f"local://?work_dir={tmp_path}/wd") as dev:
        first = sync_files(dev, {"data": files / "a.bin"})
        (files / "a.bin").write_bytes(b"beta")
        second = sync_files(dev, {"data": files / "a.bin"})
    assert second.pushed == ["data"] and second.dest != first.dest
    assert open(second.paths["data"], "rb").read() == b"beta"
    assert open(first.paths["data"], "rb").read() == b"alpha"  # old layout still intact


def test_same_bytes_under_two_names_cross_once(tmp_path, files):
    with resolve_device(f"local://?work_dir={tmp_path}/wd") as dev:
        res = sync_files(dev, {"x": files / "a.bin", "y": files / "a.bin"})
    assert res.pushed == ["x"] and res.skipped == ["y"]
    assert os.path.realpath(res.paths["x"]) == os.path.realpath(res.paths["y"])


def test_names_with_slashes_are_refused(tmp_path, files):
    with resolve_device(f"local://?work_dir={tmp_path}/wd") as dev:
        with pytest.raises(ValueError):
            sync_files(dev, {"../evil": files / "a.bin"})
