"""A run mode is a class of its own, and the one scaffolding runs it: a mode defined here (never in
runtime/) pushes a file, runs the real runner's ``--list-kernels`` and pulls its file back, on ``local://``
with the real host bundle and on a ``fake://`` board -- without a line of runtime/deploy.py knowing it.
Also: what the forward mode refuses before a device is touched, and the incremental line parser."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from edgerun.core.errors import DeviceRunError, UsageError
from edgerun.devices.fake import fake_board, reset_fake_boards
from edgerun.devices.info import DeviceInfo
from edgerun.devices.inventory import resolve_device
from edgerun.runtime.deploy import run_on_device
from edgerun.runtime.modes import ForwardRequest, RunMode
from edgerun.runtime.protocol import Header, Kernels, LineParser, Token


@dataclass(frozen=True)
class KernelsMode:
    """A mode of this test only: what the bundle registered, plus a note sent there and fetched back."""

    mode_name: ClassVar[str] = "kernels"
    remote_dirs: ClassVar[tuple[str, ...]] = ()
    deploy_vectors: ClassVar[bool] = False
    deploy_dataset: ClassVar[bool] = False

    note: str = "hello"

    def check(self, manifest) -> None:
        if not self.note:
            raise UsageError("the note must not be empty")

    def run_json(self) -> dict:
        return {"note": self.note}

    def push(self, ctx) -> None:
        local = ctx.write("note.txt", self.note)
        ctx.pushed["note"] = ctx.push({"note.txt": local}).paths["note.txt"]

    def argv(self, ctx) -> list[str]:
        return ctx.prefix() + ["--list-kernels"]

    def collect(self, ctx, result, run) -> None:
        run.extras["note_back"] = ctx.pull(ctx.pushed["note"], ctx.run_dir / "note.back.txt").read_text()
        run.extras["kernels"] = result.kernels


def test_the_test_mode_satisfies_the_protocol():
    assert isinstance(KernelsMode(), RunMode) and isinstance(ForwardRequest(), RunMode)


@pytest.fixture
def artifact(make_artifact):
    return make_artifact("digits_cnn", "host", "fp32")


def test_a_new_mode_runs_on_local_with_the_real_runner(artifact, runner_bundle, tmp_path):
    runner_bundle("host")
    with resolve_device(f"local://?work_dir={tmp_path / 'dev'}") as dev:
        run = run_on_device(artifact, dev, KernelsMode(note="local note"), run_dir=tmp_path / "run")
    kernels = run.extras["kernels"]
    assert isinstance(kernels, Kernels) and "XnnpackBackend" in kernels.backends and kernels.operators
    assert run.extras["note_back"] == "local note"
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "ok" and meta["mode"] == "kernels" and meta["note"] == "local note"
    assert "--list-kernels" in meta["argv"]
    assert (tmp_path / "run" / "runner.jsonl").read_text().count('"type":"kernels"') == 1


def test_a_new_mode_runs_on_a_fake_board_and_its_failure_keeps_the_run_dir(artifact, runner_bundle, tmp_path):
    runner_bundle("host")  # the bundle pushed to the board
    reset_fake_boards()
    board = fake_board("modes")
    board.info = DeviceInfo(arch="x86_64", cpu_model="fake", cores=2, emulated=True, emulator="fake",
                            transport="fake")
    lines = [{"type": "header", "protocol": 1, "runner_version": "0.1.0", "arch": "x86_64"},
             {"type": "kernels", "operators": ["aten::add.out"], "backends": ["XnnpackBackend"]}]
    seen = []

    def runner(argv):
        seen.append(argv)
        if argv[0].endswith("edgerun-runner"):
            return 0, "\n".join(json.dumps(x) for x in lines).encode() + b"\n", b""
        return 127, b"", f"no {argv[0]}\n".encode()

    board.default = runner
    with resolve_device("fake://modes") as dev:
        run = run_on_device(artifact, dev, KernelsMode(note="fake note"), run_dir=tmp_path / "run")
    assert run.extras["kernels"].operators == ("aten::add.out",) and run.extras["note_back"] == "fake note"
    assert seen[-1][-1] == "--list-kernels"

    lines[1] = {"type": "error", "stage": "load", "error": "InvalidProgram", "message": "bad"}
    with resolve_device("fake://modes") as dev, pytest.raises(DeviceRunError) as info:
        run_on_device(artifact, dev, KernelsMode(), run_dir=tmp_path / "run2")
    assert "kernels run failed" in info.value.message
    assert json.loads((tmp_path / "run2" / "run.json").read_text())["status"] == "failed"
    assert (tmp_path / "run2" / "runner.jsonl").is_file()
    reset_fake_boards()


def test_a_mode_refuses_before_anything_is_made(artifact, tmp_path):
    with resolve_device(f"local://?work_dir={tmp_path / 'dev'}") as dev:
        with pytest.raises(UsageError, match="note"):
            run_on_device(artifact, dev, KernelsMode(note=""), run_dir=tmp_path / "run")
        with pytest.raises(UsageError, match="--vector 99"):
            run_on_device(artifact, dev, ForwardRequest(vector=99), run_dir=tmp_path / "run")
        with pytest.raises(TypeError, match="forward mode"):
            run_on_device(artifact, dev, KernelsMode(), vector=1)
    assert not (tmp_path / "run").exists()


def test_line_parser_yields_each_typed_line_once_as_it_completes():
    p = LineParser()
    header = json.dumps({"type": "header", "protocol": 1}).encode()
    token = json.dumps({"type": "token", "repeat": 0, "warmup": False, "index": 0, "id": 7, "source": "prefill",
                        "execute_ns": 5}).encode()
    assert p.feed(header[:10]) == []
    (h,) = p.feed(header[10:] + b"\nnot json\n" + token[:5])  # a broken line is skipped, not raised
    assert isinstance(h, Header) and h.protocol == 1
    assert p.feed(token[5:9]) == []
    (t,) = p.feed(token[9:] + b"\n")
    assert isinstance(t, Token) and t.id == 7
    assert p.feed(b'{"type": "newer-line", "x": 1}\n') == []  # a newer runner's line: ignored
