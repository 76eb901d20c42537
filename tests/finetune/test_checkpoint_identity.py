"""Issue 20 item 4: a checkpoint of another run was resumed silently.

An SGD checkpoint resumed with ``--optimizer adamw``, or a batch-16 program's checkpoint resumed by a
batch-32 program, exited 0 and stored a wrecked model. Every checkpoint edgerun pulls now has its
identity beside it (``checkpoint.bin.json``: the training program's hash, method, batch, optimizer and
every hyper-parameter, data order and data hash, and the step), and ``--resume`` refuses a checkpoint
that differs in any of them, naming each difference. After a killed training the last checkpoint is
pulled from the device's work directory and the error names it and how to resume.
"""

from __future__ import annotations

import json

import pytest

from edgerun.core.errors import EdgerunError, UsageError
from edgerun.finetune import FinetuneSettings, finetune
from edgerun.runtime.train import (IDENTITY_KEYS, TrainRequest, check_resume, checkpoint_identity, identity_path,
                                   write_checkpoint_identity)

MLP = "ft_models:mlp"


def _identity(**request):
    return checkpoint_identity(TrainRequest(**request), program_sha256="a" * 64, method="full", batch=16,
                               data="d" * 64)


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if value < 0.5 else value / 2
    return f"other-{value}"


@pytest.mark.parametrize("key", IDENTITY_KEYS)
def test_a_checkpoint_differing_in_any_recorded_property_is_refused_by_name(tmp_path, key):
    ckpt = tmp_path / "checkpoint.bin"
    ckpt.write_bytes(b"state")
    saved = _identity(momentum=0.9)
    write_checkpoint_identity(ckpt, saved, step=10)
    assert check_resume(ckpt, saved, steps=20) == 10                      # the same run goes on
    mine = {**saved, key: _other(saved[key])}
    with pytest.raises(UsageError) as ei:
        check_resume(ckpt, mine, steps=20)
    assert f"{key}: the checkpoint's {saved[key]!r}" in ei.value.message and ei.value.exit_code == 2


def test_a_checkpoint_without_its_identity_or_with_a_broken_one_is_refused(tmp_path):
    ckpt = tmp_path / "checkpoint.bin"
    ckpt.write_bytes(b"state")
    with pytest.raises(UsageError, match="no checkpoint.bin.json beside it"):
        check_resume(ckpt, _identity(), steps=20)
    for junk in ("[1, 2]", "{not json", "x" * 70_000):
        identity_path(ckpt).write_text(junk)
        with pytest.raises(UsageError, match="unreadable"):
            check_resume(ckpt, _identity(), steps=20)
    write_checkpoint_identity(ckpt, _identity(), step=20)
    with pytest.raises(UsageError, match="at step 20; --steps 20 leaves nothing to train"):
        check_resume(ckpt, _identity(), steps=20)


@pytest.mark.slow
def test_resuming_with_another_optimizer_or_batch_is_refused_the_same_run_goes_on(digits_npz):
    common = dict(steps=12, lr=0.05, momentum=0.9, threads=1)
    first = finetune(MLP, "local://", TrainRequest(**common, stop_at=6), FinetuneSettings(batch=8, data=str(digits_npz)))
    ckpt = first["record"].training.checkpoint
    saved = json.loads(identity_path(__import__("pathlib").Path(ckpt)).read_text())
    assert saved["step"] == 6 and saved["optimizer"] == "sgd" and saved["batch"] == 8
    with pytest.raises(UsageError, match="optimizer: the checkpoint's 'sgd', this run's 'adamw'"):
        finetune(MLP, "local://", TrainRequest(**{**common, "optimizer": "adamw", "momentum": 0.0}),
                 FinetuneSettings(batch=8, data=str(digits_npz), resume=ckpt))
    with pytest.raises(UsageError, match="batch: the checkpoint's 8, this run's 16") as ei:
        finetune(MLP, "local://", TrainRequest(**common), FinetuneSettings(batch=16, data=str(digits_npz), resume=ckpt))
    assert "program_sha256" in ei.value.message
    rest = finetune(MLP, "local://", TrainRequest(**common), FinetuneSettings(batch=8, data=str(digits_npz), resume=ckpt))
    assert rest["record"].training.start_step == 6 and rest["record"].training.steps == 6


@pytest.mark.slow
def test_a_killed_training_leaves_its_checkpoint_here_and_says_how_to_resume(digits_npz):
    req = TrainRequest(steps=10_000_000, lr=0.01, checkpoint_every=200, threads=1, eval_every=0)
    with pytest.raises(EdgerunError) as ei:
        finetune(MLP, "local://", req, FinetuneSettings(batch=8, data=str(digits_npz), timeout_s=4))
    hint = ei.value.hint or ""
    assert "--resume" in hint and "checkpoint.bin" in hint, ei.value.paragraph()
    path = __import__("pathlib").Path(hint.split("--resume ")[1].rstrip("."))
    assert path.is_file() and path.stat().st_size > 0
    saved = json.loads(identity_path(path).read_text())
    assert saved["step"] >= 200 and saved["step"] % 200 == 0 and saved["batch"] == 8
