"""Zeroth-order fine-tuning of an LLM on the device (issue 21): MeZO (every weight) and ZO-LoRA (LoRA
adapters over a base frozen in the program), two forward passes a step at inference memory.

Nothing here takes the device's word for it: :mod:`edgerun.runtime.zo` replays the runner's seeded
perturbations in numpy on the eager model (the program's own function, in PyTorch) and must give the
device's loss curve; the trained weights the device sends back must be the replay's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edgerun.core.artifact import read_manifest
from edgerun.core.errors import UsageError
from edgerun.finetune import FinetuneSettings, finetune, training_defaults
from edgerun.runtime import zo
from edgerun.runtime.train import TrainRequest

SETTINGS = dict(batch=4, seq_len=16)


def _run(gguf, method, device="local://", **request):
    req = TrainRequest(**{"steps": 12, "lr": 1e-2 if method == "zo-lora" else 1e-4, "threads": 1, "mezo": True,
                          "mezo_eps": 1e-2 if method == "zo-lora" else 1e-3, "shuffle": False, **request})
    return req, finetune(str(gguf), device, req, FinetuneSettings(method=method, **SETTINGS))


def _replay(res, req):
    """The same seeded steps in eager PyTorch: the program's forward(x, y, *weights) from the exported
    module, the device's own starting weights and data, batches in file order."""
    from edgerun.export.finetune import PREFIX, _mezo_wrapper  # noqa: PLC2701 (the program's function)

    program, run_dir = res["program"], res["run_dir"]
    weights = [np.load(run_dir / "init" / f"{PREFIX}{n}.npy") for n in program.names]
    x, y = np.load(run_dir / "data" / "x_train.npy"), np.load(run_dir / "data" / "y_train.npy")
    fn = _mezo_wrapper(res["initial_model"].eval(), list(program.names))
    B, per_epoch = program.batch, len(x) // program.batch
    curve = []
    for step in range(req.steps):
        k = step % per_epoch
        xb, yb = torch.from_numpy(x[k * B:(k + 1) * B]), torch.from_numpy(y[k * B:(k + 1) * B])

        def loss():
            with torch.no_grad():
                return float(fn(xb, yb, *(torch.from_numpy(w) for w in weights))[0])

        curve.append(zo.step(weights, loss, seed=req.seed, step=step, lr=req.lr, eps=req.mezo_eps,
                             samples=req.zo_samples, weight_decay=req.weight_decay, kind=req.zo_noise)[0])
    return curve, dict(zip(program.names, weights))


def test_the_numpy_rule_is_the_runners_generator():
    """Fixed points of the counter-based generator: a change to either side breaks the other."""
    z = zo.noise(zo.step_key(0, 0), 5)
    assert z.dtype == np.float64 and np.all(np.isfinite(z)) and len(set(z.round(12))) == 5
    r = zo.noise(zo.step_key(3, 1, 2), 130, "rademacher")
    assert set(np.unique(r)) == {-1.0, 1.0} and abs(r.mean()) < 0.3
    big = zo.noise(12345, 200_000)
    assert abs(big.mean()) < 0.01 and abs(big.std() - 1) < 0.01        # N(0, 1)
    assert zo.step_key(0, 1) != zo.step_key(0, 0, 1) != zo.step_key(1, 0)
    w = [np.ones((3, 2), np.float32), np.zeros(3, np.float32)]
    zo.perturb(w, 7, 0.5)
    full = zo.noise(7, 9)
    assert np.array_equal(w[0].reshape(-1), (1 + 0.5 * full[:6]).astype(np.float32))
    assert np.array_equal(w[1], (0.5 * full[6:]).astype(np.float32))


@pytest.mark.parametrize("method, request_", [("mezo", {}), ("zo-lora", {}),
                                              ("mezo", {"zo_samples": 2, "zo_noise": "rademacher"})])
def test_zeroth_order_llm_steps_are_the_eager_replay_of_the_same_seeded_steps(tiny_gguf, method, request_):
    req, res = _run(tiny_gguf, method, **request_)
    t = res["record"].training
    assert t.method == method and t.optimizer == "mezo-sgd" and t.optimizer_state_bytes == 0
    if method == "zo-lora":  # rank-8 adapters on wq, wv of both layers; the base is the program's constants
        assert t.trainable == 2 * ((8 * 64 + 64 * 8) + (8 * 64 + 32 * 8)) and t.frozen == 98624
    else:
        assert t.trainable == 98624 and t.frozen == 0
    assert b"XnnpackBackend" in res["program"].path.read_bytes()  # the forward is an inference: delegated
    curve, replayed = _replay(res, req)
    device_curve = [v for _, v in t.loss_curve]
    np.testing.assert_allclose(device_curve, curve, atol=1e-4, rtol=0)
    pulled = res["run_dir"] / "weights"
    from edgerun.export.finetune import PREFIX

    for name, w in replayed.items():
        np.testing.assert_allclose(np.load(pulled / f"{PREFIX}{name}.npy"), w, atol=1e-5, rtol=0, err_msg=name)
    assert res["agreement"]["agrees"], res["agreement"]


def test_zeroth_order_training_lowers_held_out_perplexity_on_the_device(tiny_gguf):
    """MeZO and ZO-LoRA learn: the tiny model's held-out perplexity on the device goes down."""
    for method, lr, eps in (("mezo", 1e-4, 1e-3), ("zo-lora", 1e-2, 1e-2)):
        req = TrainRequest(steps=150, lr=lr, mezo=True, mezo_eps=eps, threads=1)
        res = finetune(str(tiny_gguf), "local://", req, FinetuneSettings(method=method, **SETTINGS))
        before, after = res["record"].training.eval_before, res["record"].training.eval_after
        # measured (200 steps): mezo 1582.1 -> 1530.6, zo-lora 1582.1 -> 1412.5
        assert after.perplexity < 0.99 * before.perplexity, (method, before, after)
        assert res["agreement"]["agrees"], res["agreement"]


def test_a_stopped_zeroth_order_run_resumes_to_the_same_bits(tiny_gguf, tmp_path):
    req, whole = _run(tiny_gguf, "zo-lora", steps=8)
    _, first = _run(tiny_gguf, "zo-lora", steps=8, stop_at=3)
    assert first["record"].training.steps == 3
    resumed = finetune(str(tiny_gguf), "local://", req, FinetuneSettings(method="zo-lora", **SETTINGS,
                                                                         resume=str(first["run_dir"] / "checkpoint.bin")))
    a = sorted((whole["run_dir"] / "weights").glob("*.npy"))
    assert a and [p.name for p in a] == sorted(p.name for p in (resumed["run_dir"] / "weights").glob("*.npy"))
    for p in a:
        assert np.array_equal(np.load(p), np.load(resumed["run_dir"] / "weights" / p.name)), p.name
    with pytest.raises(UsageError, match="zo_samples"):  # another number of directions is another run
        finetune(str(tiny_gguf), "local://", dataclasses.replace(req, zo_samples=2),
                 FinetuneSettings(method="zo-lora", **SETTINGS, resume=str(first["run_dir"] / "checkpoint.bin")))


def test_zo_lora_merges_into_a_verified_llm_artifact(tiny_gguf, tmp_path):
    req = TrainRequest(steps=20, lr=1e-2, mezo=True, mezo_eps=1e-2, threads=1)
    res = finetune(str(tiny_gguf), "local://", req, FinetuneSettings(method="zo-lora", **SETTINGS,
                                                                     export_to=str(tmp_path / "art"),
                                                                     export_max_context=32))
    m = read_manifest(tmp_path / "art")
    assert m.ok and m.llm is not None and m.lineage.method == "zo-lora" and m.lineage.lora.rank == 8
    assert m.recipe.model["weights_sha256"] == res["record"].training.weights_sha256


def test_zeroth_order_options_are_checked_before_any_work():
    assert training_defaults("smollm2-135m", "mezo") == ("mezo", "sgd", 1e-6)
    assert training_defaults("smollm2-135m", "zo-lora") == ("zo-lora", "sgd", 1e-4)
    assert training_defaults("smollm2-135m", "qlora") == ("qlora", "adamw", 2e-3)
    for bad in ({"zo_samples": 0}, {"zo_samples": 2000}, {"zo_noise": "uniform"}, {"mezo_eps": 0.0}):
        with pytest.raises(UsageError):
            TrainRequest(mezo=True, **bad)
    args = TrainRequest(mezo=True, zo_samples=3, zo_noise="rademacher").runner_args(
        data={"x_train.npy": "x", "y_train.npy": "y"}, checkpoint="c", weights_out="w", weights_in="i")
    assert args[args.index("--zo-samples") + 1] == "3" and args[args.index("--zo-noise") + 1] == "rademacher"


@pytest.mark.qemu
def test_a_zeroth_order_step_is_the_same_bits_on_aarch64(tiny_gguf, runner_bundle, need):
    """Under qemu-aarch64 -cpu cortex-a76 the step rule does to the weights, bit for bit, what numpy does
    on the host given the projected gradients the device printed: the generator is counter-based and the
    runner's arithmetic is not contracted into FMAs. (The forward kernels themselves round differently on
    the two: the losses agree to ~1e-7, not to the bit, and so do the gradients they give.)"""
    import json

    from edgerun.export.finetune import PREFIX

    need("qemu-aarch64", "qemu-user")
    runner_bundle("aarch64")
    runs = {}
    for device in ("local://", "qemu-aarch64://?cpu=cortex-a76"):
        req, res = _run(tiny_gguf, "mezo", device=device, steps=3)
        runs[device] = res
        program, run_dir = res["program"], res["run_dir"]
        weights = [np.load(run_dir / "init" / f"{PREFIX}{n}.npy") for n in program.names]
        lines = [json.loads(x) for x in (run_dir / "runner.jsonl").read_text().splitlines() if x.startswith("{")]
        grads = [d["projected_grad"] for d in lines if d.get("type") == "step"]
        assert len(grads) == 3
        for step, g in enumerate(grads):
            zo.replay(weights, [g], seed=req.seed, step=step, lr=req.lr, eps=req.mezo_eps)
        for name, w in zip(program.names, weights):
            assert np.array_equal(np.load(run_dir / "weights" / f"{PREFIX}{name}.npy"), w), (device, name)
            assert not np.array_equal(w, np.load(run_dir / "init" / f"{PREFIX}{name}.npy")), name  # it trained
    host, arm = runs["local://"], runs["qemu-aarch64://?cpu=cortex-a76"]
    assert arm["record"].source == "emulated" and arm["record"].device.arch == "aarch64"
    np.testing.assert_allclose([v for _, v in arm["record"].training.loss_curve],
                               [v for _, v in host["record"].training.loss_curve], rtol=1e-5)


def test_a_gguf_rewritten_at_the_same_path_gets_a_new_training_program(tmp_path):
    """The training-program cache follows the GGUF's bytes, not its path (a re-downloaded model at the
    same path used to train the old model's program)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "llm"))
    from tiny import write_tiny_gguf

    from edgerun.export.zoo import get_model
    from edgerun.finetune import _program_cache  # noqa: PLC2701

    path = write_tiny_gguf(tmp_path / "model.gguf")
    first = _program_cache(get_model(str(path)), 4, (), "mezo")
    assert _program_cache(get_model(str(path)), 4, (), "mezo") == first
    with open(path, "ab") as f:  # another file at the same path
        f.write(b"\0" * 32)
    second = _program_cache(get_model(str(path)), 4, (), "mezo")
    assert second != first
    import edgerun.export.finetune as builder  # and another program-building code

    changed = tmp_path / "finetune.py"
    changed.write_text(Path(builder.__file__).read_text() + "\n# changed\n")
    real = builder.__file__
    try:
        builder.__file__ = str(changed)
        assert _program_cache(get_model(str(path)), 4, (), "mezo") != second
    finally:
        builder.__file__ = real


def test_an_llms_token_windows_on_the_device_never_leave_it(tiny_gguf, tmp_path):
    """--data-on-device for an LLM: [N, T] token ids and next tokens already on the device (here the local
    device's own directory); nothing is pushed, the held-out perplexity is the device's."""
    sys_ids = np.random.default_rng(0).integers(0, 200, size=(24, 17)).astype(np.int64)
    device_dir = tmp_path / "on-device"
    device_dir.mkdir()
    for split, rows in (("train", sys_ids[:16]), ("eval", sys_ids[16:])):
        np.save(device_dir / f"x_{split}.npy", rows[:, :-1])
        np.save(device_dir / f"y_{split}.npy", rows[:, 1:])
    req = TrainRequest(steps=6, lr=1e-2, mezo=True, mezo_eps=1e-2, threads=1)
    res = finetune(str(tiny_gguf), "local://", req, FinetuneSettings(method="zo-lora", batch=4, seq_len=16,
                                                                     data_on_device=str(device_dir)))
    t = res["record"].training
    assert t.train_samples == 16 and t.eval_samples == 8 and t.eval_after.perplexity is not None
    assert t.settings["data"] == f"device:{device_dir}" and not (res["run_dir"] / "data").exists()
    np.save(device_dir / "x_train.npy", sys_ids[:16, :-2])  # windows of another length: the runner says so
    from edgerun.core.errors import EdgerunError

    with pytest.raises(EdgerunError, match="the program trains on"):
        finetune(str(tiny_gguf), "local://", req, FinetuneSettings(method="zo-lora", batch=4, seq_len=16,
                                                                   data_on_device=str(device_dir)))
