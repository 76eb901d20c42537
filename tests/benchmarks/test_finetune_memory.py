"""benchmarks/finetune_memory.py on the tiny GGUF, 2 steps of full SGD and LoRA: the real runner and eager
PyTorch in its own process, nothing timed. The table's structure, every figure positive, the derived ones
consistent with the measured ones, and the two sides doing the same work: the same trainable parameters and
held-out perplexity before and after (same model, same windows in the same order, same optimizer)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "finetune_memory.py"
METHODS = ("full-sgd", "lora")


@pytest.fixture(scope="module")
def bench():
    """The benchmark imported from its file (registered while the tests use it: its dataclasses need it)."""
    spec = importlib.util.spec_from_file_location("finetune_memory", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["finetune_memory"] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("finetune_memory", None)


@pytest.fixture(scope="module")
def result(bench, runner_bundle, edgerun_home, tiny_gguf, tmp_path_factory):
    """One run of the benchmark in the session's EDGERUN_HOME (a module fixture runs outside the per-test
    one; the eager workers inherit it), on the session's tiny GGUF (tests/conftest.py: the bytes the
    benchmark's ``--tiny`` writes) at batch 4 x 16 tokens, tests/finetune's LLM settings: the full and LoRA
    training programs it exports are cached by the GGUF's path and those settings, so test_finetune's LLM
    runs load them instead of exporting the same two programs again."""
    runner_bundle("host")  # built (or skipped with the tool that is missing) before the benchmark asks for it
    work = tmp_path_factory.mktemp("finetune-memory")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGERUN_HOME", str(edgerun_home))
        args = bench.parse_args(["--tiny", "--steps", "2", "--batch", "4", "--seq-len", "16",
                                 "--methods", ",".join(METHODS)])
        assert bench.tiny_gguf(work).read_bytes() == tiny_gguf.read_bytes()   # --tiny's model is the session's
        return bench.benchmark(str(tiny_gguf), args.methods, args, str(work / "results.sqlite"))


@pytest.mark.slow
def test_the_table_has_a_row_per_method_with_both_sides_measured(bench, result):
    assert [r["key"] for r in result["rows"]] == list(METHODS)
    inference = result["inference"]["runner"]["peak_rss_bytes"]
    assert inference > 0 and result["inference"]["eager"]["peak_rss_bytes"] > 0
    counts = result["parameters"]
    for row in result["rows"]:
        m = bench.METHODS[row["key"]]
        rt, eg = row["runner"], row["eager"]
        assert rt["status"] == "ok" and eg["status"] == "ok", (rt, eg)
        # the trained parameters: what the program trains, what eager trains, what the benchmark counted
        assert rt["trainable"] == eg["trainable"] == (counts["adapters"] if m.adapters else counts["base"])
        assert rt["trainable"] + rt["frozen"] == row["parameters"]
        for side in (rt, eg):
            assert side["peak_rss_bytes"] > 0 and side["steps_per_s"] > 0 and side["steps"] == 2
            assert side["bytes_per_param"] == pytest.approx(side["peak_rss_bytes"] / row["parameters"])
            assert side["ppl_before"] > 1 and side["ppl_after"] > 1
        assert rt["minus_inference_bytes"] == rt["peak_rss_bytes"] - inference
        assert rt["peak_rss_bytes"] > inference  # training holds more than the forward alone
        assert rt["train_s"] > 0 and rt["wall_s"] >= rt["train_s"]
        # the same steps on the same data: the same held-out perplexity before and after
        assert eg["ppl_before"] == pytest.approx(rt["ppl_before"], rel=1e-4)
        assert eg["ppl_after"] == pytest.approx(rt["ppl_after"], rel=1e-3)
        assert len(rt["loss_curve"]) == len(eg["loss_curve"]) == 2
        assert eg["loss_curve"] == pytest.approx(rt["loss_curve"], rel=1e-3)
    by = {r["key"]: r for r in result["rows"]}
    assert by["full-sgd"]["bound_bytes_per_param"] == 8.0  # w and g, fp32
    lora = by["lora"]
    assert lora["bound_bytes"] == 4 * counts["base"] + 16 * counts["adapters"]
    # LoRA's final held-out perplexity is the target the others are timed to: it reaches it at its last step
    assert result["target_ppl"] == lora["runner"]["ppl_after"] < lora["runner"]["ppl_before"]
    assert lora["runner"]["to_target"]["step"] == 2
    assert lora["runner"]["to_target"]["train_s"] == pytest.approx(sum(lora["runner"]["step_wall_s"]))
    json.dumps(result)  # the --json / --save form


@pytest.mark.slow
def test_the_printed_table_and_its_goals(bench, result):
    text = bench.render(result)
    assert "## edgerun (the runner)" in text and "## eager PyTorch" in text and "## goals (issue 21)" in text
    for row in result["rows"]:
        assert sum(1 for line in text.splitlines() if line.startswith(f"| {row['label']} ")) == 2
    goals = {g["goal"]: g for g in result["goals"]}
    for key in METHODS:
        g = goals[f"{key} peak: edgerun / eager"]
        by = {r["key"]: r for r in result["rows"]}[key]
        assert g["value"] == pytest.approx(by["runner"]["peak_rss_bytes"] / by["eager"]["peak_rss_bytes"])
        assert g["met"] == (g["value"] <= 1.0)
    assert not any(g.startswith("lora peak / full AdamW") for g in goals)  # no full AdamW row to divide by


def test_a_method_edgerun_refuses_is_a_row_saying_so(bench, monkeypatch):
    """QLoRA is not built: its row says edgerun's refusal instead of crashing the benchmark."""
    from edgerun.core.errors import UsageError

    def refuse(*_a, **_k):
        raise UsageError("--method qlora: choose full, lora, mezo or zo-lora.")

    monkeypatch.setattr("edgerun.finetune.finetune", refuse)
    args = bench.parse_args(["--tiny", "--steps", "2"])
    row = bench.runner_finetune("tiny.gguf", bench.METHODS["qlora"], 2e-3, args, None)
    assert row["status"] == "refused" and "qlora" in row["message"]


def test_unknown_methods_and_a_missing_model_are_usage_errors(bench):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--tiny", "--methods", "full-adamw,sparse"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--steps", "2"])
    assert e.value.code == 2


def test_time_to_a_perplexity_is_the_steps_wall_time_until_the_first_evaluation_that_reaches_it(bench):
    side = {"status": "ok", "evals": [[0, 100.0], [2, 90.0], [4, 80.0], [6, 85.0]],
            "step_wall_s": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}
    assert bench.time_to(side, 90.0) == {"step": 2, "train_s": 3.0, "target": 90.0}
    assert bench.time_to(side, 82.0) == {"step": 4, "train_s": 10.0, "target": 82.0}
    assert bench.time_to(side, 70.0) == {"step": None, "train_s": None, "target": 70.0, "best": 80.0}
    assert bench.time_to(side, None) is None and bench.time_to({"status": "refused"}, 90.0) is None
