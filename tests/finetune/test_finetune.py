"""On-device fine-tuning for real: the native runner trains an ExecuTorch training program on the host,
under qemu-aarch64 (cortex-a76) and over a real sshd; its loss curve is eager PyTorch's SGD, a run
stopped and resumed from its checkpoint ends with bit-identical weights, the pulled weights score in
eager what the device said, data given on the device never leaves it, and --export-to writes a
verified artifact that names its lineage."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from edgerun.core.artifact import read_manifest
from edgerun.core.errors import UsageError
from edgerun.finetune import FinetuneSettings, finetune
from edgerun.runtime.record import compare_records
from edgerun.runtime.train import TrainRequest

pytestmark = pytest.mark.slow
MLP = "ft_models:mlp"


def _eager_sgd(npz, steps, batch, lr, momentum):
    from ft_models import mlp

    net, _ = mlp()
    m = copy.deepcopy(net).train()
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum)
    z = np.load(npz)
    x, y = torch.from_numpy(z["x_train"]), torch.from_numpy(z["y_train"])
    losses = []
    for s in range(steps):
        k = (s * batch) % (len(x) // batch * batch)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(x[k:k + batch]), y[k:k + batch])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, m


def test_device_loss_curve_is_eager_sgd_and_weights_agree(digits_npz):
    req = TrainRequest(steps=30, lr=0.1, momentum=0.9, shuffle=False, threads=1)
    res = finetune(MLP, "local://", req, FinetuneSettings(batch=16, data=str(digits_npz)))
    t = res["record"].training
    device = [loss for _, loss in t.loss_curve]
    eager, model = _eager_sgd(digits_npz, 30, 16, 0.1, 0.9)
    np.testing.assert_allclose(device, eager, rtol=1e-4, atol=1e-5)
    assert res["agreement"]["agrees"] and res["agreement"]["device_accuracy"] == t.eval_after.accuracy
    assert t.eval_before.accuracy < 0.3 < t.eval_after.accuracy, (t.eval_before, t.eval_after)
    assert t.trainable == 64 * 32 + 32 + 32 * 10 + 10 and t.optimizer_state_bytes == t.trainable * 4
    assert res["record"].latency.n == 30 and t.steps_per_s > 0 and res["record"].memory.peak_rss_bytes > 0


def test_stopped_and_resumed_run_ends_with_identical_weights(digits_npz, tmp_path):
    common = dict(steps=24, lr=0.01, optimizer="adamw", weight_decay=0.01, schedule="cosine", warmup_steps=3,
                  grad_accum=2, threads=1)
    full = finetune(MLP, "local://", TrainRequest(**common), FinetuneSettings(batch=8, data=str(digits_npz)))
    first = finetune(MLP, "local://", TrainRequest(**common, stop_at=10),
                     FinetuneSettings(batch=8, data=str(digits_npz)))
    assert first["record"].training.steps == 10
    rest = finetune(MLP, "local://", TrainRequest(**common),
                    FinetuneSettings(batch=8, data=str(digits_npz), resume=first["record"].training.checkpoint))
    assert rest["record"].training.start_step == 10 and rest["record"].training.steps == 14
    a = sorted((full["run_dir"] / "weights").glob("*.npy"))
    b = sorted((rest["run_dir"] / "weights").glob("*.npy"))
    assert [p.name for p in a] == [p.name for p in b] and a
    for pa, pb in zip(a, b):
        assert np.array_equal(np.load(pa), np.load(pb)), pa.name
    with pytest.raises(UsageError, match="no such checkpoint"):
        finetune(MLP, "local://", TrainRequest(**common), FinetuneSettings(batch=8, data=str(digits_npz),
                                                                          resume=str(tmp_path / "none.bin")))


@pytest.mark.qemu
def test_training_under_qemu_cortex_a76_follows_the_host(digits_npz, runner_bundle, need):
    need("qemu-aarch64", "qemu-user")
    runner_bundle("aarch64")
    req = TrainRequest(steps=12, lr=0.1, momentum=0.9, shuffle=False, threads=1)
    host = finetune(MLP, "local://", req, FinetuneSettings(batch=16, data=str(digits_npz)))
    arm = finetune(MLP, "qemu-aarch64://?cpu=cortex-a76", req, FinetuneSettings(batch=16, data=str(digits_npz)))
    assert arm["record"].source == "emulated" and arm["record"].device.arch == "aarch64"
    np.testing.assert_allclose([v for _, v in arm["record"].training.loss_curve],
                               [v for _, v in host["record"].training.loss_curve], rtol=1e-4, atol=1e-5)
    c = compare_records(host["record"], arm["record"])
    assert any(m.metric == "eval_accuracy_after" for m in c.metrics)


def test_data_on_the_device_never_leaves_it(digits_npz, loopback_sshd, tmp_path):
    device_dir = tmp_path / "on-device-data"   # the sshd runs on this machine: its files are "the device's"
    device_dir.mkdir()
    z = np.load(digits_npz)
    for k in ("x_train", "y_train", "x_eval", "y_eval"):
        np.save(device_dir / f"{k}.npy", z[k])
    res = finetune(MLP, loopback_sshd.uri(), TrainRequest(steps=10, lr=0.1, momentum=0.9, threads=1),
                   FinetuneSettings(batch=16, data_on_device=str(device_dir)))
    t = res["record"].training
    assert t.data_sha256 is None and t.settings["data"] == f"device:{device_dir}"
    assert not (res["run_dir"] / "data").exists()           # nothing of the data was written or sent
    assert t.eval_after.samples == 397 // 16 * 16
    with pytest.raises(Exception, match="no readable x_train.npy"):
        finetune(MLP, loopback_sshd.uri(), TrainRequest(steps=2), FinetuneSettings(
            batch=16, data_on_device=str(tmp_path / "empty")))


def test_export_to_writes_a_verified_artifact_with_lineage(digits_npz, tmp_path):
    res = finetune(MLP, "local://", TrainRequest(steps=40, lr=0.1, momentum=0.9, threads=1),
                   FinetuneSettings(batch=16, data=str(digits_npz), export_to=str(tmp_path / "art")))
    m = read_manifest(tmp_path / "art")
    assert m.ok and m.lineage.base_model == MLP and m.lineage.steps == 40
    assert m.lineage.run_id == res["record"].run_id and m.lineage.weights_sha256
    assert m.lineage.data_sha256 == res["record"].training.data_sha256
    assert m.lineage.eval_after.accuracy == res["record"].training.eval_after.accuracy
    # the artifact's identity is the trained weights': another fine-tune of the same base is another recipe
    assert m.model.name == "ft_models:mlp-finetuned" and m.recipe.model["state_sha256"]
    from edgerun.report import render

    html = render([res["record"]], "html")
    assert "Fine-tuning on the device" in html and "training loss" in html
    assert "train-full" in render([res["record"]], "md")


def test_cli_finetune_json_and_clear_errors(cli, digits_npz, tmp_path):
    # the factory's module must be importable by the CLI process: tests/finetune is put on PYTHONPATH
    import os
    from pathlib import Path

    env = {"PYTHONPATH": str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = cli("finetune", MLP, "--data", str(digits_npz), "--steps", "5", "--batch", "16", "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["training"]["loss_curve"]) == 5 and out["run_id"].startswith("r-")
    t = out["training"]  # a classifier's defaults: full backprop, SGD (momentum 0.9) at 0.01
    assert (t["method"], t["optimizer"], t["lr"]) == ("full", "sgd", 0.01)
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    r = cli("finetune", MLP, "--data", str(tmp_path / "bad.npz"), "--json", env=env)
    assert r.returncode == 2 and "has no x_train, y_train" in json.loads(r.stdout)["error"]["message"]
    r = cli("finetune", "smollm2-135m", "--method", "mezo", "--zo-samples", "0", "--json")  # before any work
    assert r.returncode == 2 and "--zo-samples must be an integer" in json.loads(r.stdout)["error"]["message"]


def test_mezo_trains_with_two_forwards_and_no_optimizer_state(digits_npz):
    """MeZO runs an inference program (weights as inputs, no backward): it learns from scratch, keeps no
    gradients or optimizer state, and the same seed gives the same weights. (Its perturbations come from
    the runner's own seeded generator, so there is no eager curve to match step by step; the pulled
    weights are re-scored in eager PyTorch instead.)"""
    req = TrainRequest(steps=1500, lr=2e-3, threads=1, mezo=True)
    a = finetune(MLP, "local://", req, FinetuneSettings(method="mezo", batch=16, data=str(digits_npz)))
    t = a["record"].training
    assert t.method == "mezo" and t.optimizer == "mezo-sgd" and t.optimizer_state_bytes == 0
    assert t.eval_after.accuracy > t.eval_before.accuracy + 0.2, (t.eval_before, t.eval_after)
    assert a["agreement"]["agrees"]
    b = finetune(MLP, "local://", req, FinetuneSettings(method="mezo", batch=16, data=str(digits_npz)))
    for pa in sorted((a["run_dir"] / "weights").glob("*.npy")):
        assert np.array_equal(np.load(pa), np.load(b["run_dir"] / "weights" / pa.name)), pa.name
    with pytest.raises(UsageError, match="MeZO is zeroth-order SGD"):
        TrainRequest(mezo=True, optimizer="adamw")


def test_lora_trains_adapters_only_and_merges_for_export(digits_npz, tmp_path):
    req = TrainRequest(steps=60, lr=0.05, optimizer="adamw", threads=1)
    res = finetune(MLP, "local://", req, FinetuneSettings(method="lora", lora_rank=4, batch=16, data=str(digits_npz),
                                                          export_to=str(tmp_path / "art")))
    t = res["record"].training
    # two adapted layers: (4x64 + 32x4) + (4x32 + 10x4) trainable, the 2410 base parameters frozen
    assert t.method == "lora" and t.trainable == (4 * 64 + 32 * 4) + (4 * 32 + 10 * 4) and t.frozen == 2410
    assert t.optimizer_state_bytes == 2 * 4 * t.trainable
    assert t.eval_after.accuracy > t.eval_before.accuracy + 0.1, (t.eval_before, t.eval_after)
    assert res["agreement"]["agrees"]  # the merged eager model scores what the device's LoRA program scored
    m = read_manifest(tmp_path / "art")
    assert m.ok and m.lineage.method == "lora" and m.lineage.lora.rank == 4
    assert {i.name for i in m.inputs} and m.model.parameters == 2410  # merged: a plain MLP again


@pytest.mark.parametrize("method", ["full", "lora"])
def test_an_llm_fine_tunes_on_text_on_the_device(method, tiny_gguf, tmp_path):
    """A Llama GGUF (the tiny one made here) learns the shipped held-out text on the device: next-token
    training program without the KV cache, held-out perplexity before/after computed on the device, and
    the pulled weights give eager PyTorch the device's held-out loss. LoRA's merged weights export as a
    verified LLM artifact (KV cache, tokenizer) whose lineage names the run."""
    from edgerun.finetune import training_defaults

    # the LLM defaults (what `edgerun finetune X.gguf` does without --optimizer/--lr): AdamW, 2e-3 for LoRA
    method, optimizer, lr = training_defaults(str(tiny_gguf), method)
    assert optimizer == "adamw" and lr == {"lora": 2e-3, "full": 1e-4}[method]
    req = TrainRequest(steps=40, lr=lr, optimizer=optimizer, threads=1)
    export_to = str(tmp_path / "art") if method == "lora" else None
    res = finetune(str(tiny_gguf), "local://", req, FinetuneSettings(method=method, batch=4, seq_len=16,
                                                                     export_to=export_to, export_max_context=32))
    t = res["record"].training
    before, after = t.eval_before, t.eval_after
    # measured: lora 1582.1 -> 1495.0 (-5.5 %), full 1582.1 -> 1392.7 (-12 %) on this random-weight model
    assert after.loss < before.loss and after.perplexity < 0.96 * before.perplexity, (before, after)
    from edgerun.report import training_rows  # the report's fine-tuning table shows the perplexity printed

    assert training_rows([res["record"]])[0][7] == f"ppl {before.perplexity:.2f} → ppl {after.perplexity:.2f}"
    assert res["agreement"]["agrees"], res["agreement"]
    assert t.settings["text"]["seq_len"] == 16 and t.settings["text"]["windows"] > 8
    if method == "lora":  # rank-8 adapters on wq (64->64) and wv (64->32) of both layers; the base frozen
        assert t.frozen == 98624 and t.trainable == 2 * ((8 * 64 + 64 * 8) + (8 * 64 + 32 * 8))
    if export_to:
        m = read_manifest(export_to)
        assert m.ok and m.llm is not None and m.llm.max_context == 32 and m.lineage.method == "lora"
        assert m.recipe.model["weights_sha256"] == t.weights_sha256
        # the exported program carries the fine-tuned weights: its perplexity is the trained model's
        assert m.llm.quality["perplexity"]["eager_fp32"] < before.perplexity


def test_llm_and_classifier_fine_tunes_start_from_their_own_defaults(tiny_gguf, cli):
    from edgerun.finetune import training_defaults

    assert training_defaults("smollm2-135m") == ("lora", "adamw", 2e-3)
    assert training_defaults(str(tiny_gguf), "full") == ("full", "adamw", 1e-4)
    assert training_defaults("digits_cnn") == ("full", "sgd", 0.01)
    assert training_defaults("smollm2-135m", "full", "sgd", 0.05) == ("full", "sgd", 0.05)  # given wins
    with pytest.raises(UsageError, match="--method bogus"):
        training_defaults("digits_cnn", "bogus")
    import re

    out = " ".join(re.sub(r"[│╭╮╰╯─]", " ", cli("finetune", "--help").stdout).split())  # rich's boxes
    assert "lora for an LLM" in out and "adamw for an LLM" in out and "--max-context" in out
