"""Like with like (issue 26, item 1): `compare` of a tg32 run against a pp64 run of one artifact said
"slower (+2222.3 %)", and `report` compared a prefill, a score and a training run with a generate run.
A run's kind and test come from its stored record (:func:`edgerun.report.run_kind`); `compare` refuses
unlike runs with exit 2 naming both, `report` compares each run only with the first of its model,
source and test, keeps training runs out of the trade-off panel, and `runs list` shows the test.

Records are built from runner lines (no program runs): the LLM and training figures are attached to
a forward record, as the analysis of an LLM or training run attaches them."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from edgerun.report import NotComparable, comparable_pairs, compare_runs, pareto_groups, render, run_kind
from edgerun.runtime.record import LLMMetrics, TrainingMetrics
from edgerun.store import Store

from .conftest import HOST_INFO, analyse_lines, manifest, runner_lines

MS = 1_000_000
KINDS = ("forward", "generate", "pp64", "tg32", "score", "train")
_ids = itertools.count()


def _record(kind: str, *, scale: float = 1.0, seed: int = 0, name: str = "tinynet"):
    rng = np.random.default_rng(seed)
    ns = (5 * MS * scale * (1 + 0.01 * rng.standard_normal(30))).astype(int)
    rec = analyse_lines(runner_lines(ns), manifest(name=name), HOST_INFO, run_id=f"r-20261206-{next(_ids):06x}")
    if kind == "train":
        return dataclasses.replace(rec, training=TrainingMetrics(
            method="lora", optimizer="adamw", lr=2e-3, steps=30, start_step=0, batch=4, grad_accum=1, trainable=10,
            frozen=100, trainable_bytes=40, optimizer_state_bytes=80, train_samples=64, eval_samples=16,
            loss_curve=((1, 2.0), (30, 1.5))))
    if kind != "forward":
        return dataclasses.replace(rec, llm=LLMMetrics(test=kind, perplexity_window=64 if kind == "score" else None))
    return rec


@pytest.mark.parametrize("kind_a,kind_b", list(itertools.permutations(KINDS, 2)))
def test_compare_refuses_every_pair_of_unlike_kinds(kind_a, kind_b):
    a, b = _record(kind_a), _record(kind_b, scale=20.0)  # B's samples are far slower: a verdict would be "slower"
    with pytest.raises(NotComparable) as err:
        compare_runs(a, b)
    assert err.value.exit_code == 2
    text = err.value.paragraph()
    assert a.run_id in text and b.run_id in text
    assert run_kind(a).test in text and run_kind(b).test in text


@pytest.mark.parametrize("kind", KINDS)
def test_runs_of_one_kind_still_get_a_verdict(kind):
    a, b = _record(kind), _record(kind, scale=1.3, seed=1)
    assert compare_runs(a, b).verdict == "slower"


def test_one_model_on_other_input_shapes_or_windows_is_not_comparable():
    a = _record("forward")
    b = dataclasses.replace(a, run_id="r-20261206-ffff01", model=dataclasses.replace(
        a.model, inputs=({"index": 0, "shape": [1, 3, 96, 96], "dtype": "float32"},)))
    with pytest.raises(NotComparable, match="1×3×96×96"):
        compare_runs(a, b)
    s = _record("score")
    wider = dataclasses.replace(s, run_id="r-20261206-ffff02", llm=dataclasses.replace(s.llm, perplexity_window=128))
    with pytest.raises(NotComparable, match="window 128"):
        compare_runs(s, wider)
    # another model of one kind stays comparable (with its warning), as before
    other = dataclasses.replace(b, run_id="r-20261206-ffff03", model=dataclasses.replace(b.model, name="othernet"))
    assert any("different models" in w for w in compare_runs(a, other).warnings)


def test_report_baselines_are_per_model_source_and_test():
    runs = [_record(k, seed=i) for i, k in enumerate(KINDS)]
    seconds = [_record(k, seed=10 + i, scale=1.2) for i, k in enumerate(KINDS)]
    pairs = comparable_pairs([*runs, *seconds])
    assert [(a.run_id, b.run_id) for a, b in pairs] == [(a.run_id, b.run_id) for a, b in zip(runs, seconds)]
    for a, b in pairs:
        assert run_kind(a) == run_kind(b)


def test_training_runs_stay_out_of_the_trade_off_panel_and_llm_tests_get_their_own():
    runs = [_record(k, seed=i) for i, k in enumerate(KINDS)]
    groups = pareto_groups(runs)
    plotted = [r.run_id for g in groups.values() for r in g]
    assert runs[KINDS.index("train")].run_id not in plotted and len(plotted) == len(KINDS) - 1
    assert len(groups) == len(KINDS) - 1  # forward and each LLM test on its own axis
    assert ("local · tg32", "measured") in groups


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("kinds") / "results.sqlite"
    runs = {k: _record(k, seed=i) for i, k in enumerate(KINDS)}
    runs["tg32-again"] = _record("tg32", seed=40, scale=1.2)
    with Store(path) as s:
        for r in runs.values():
            s.save(r)
    return path, runs


def test_cli_compare_of_tg32_against_pp64_exits_2_naming_both(cli, mixed_store):
    path, runs = mixed_store
    p = cli("compare", runs["pp64"].run_id, runs["tg32"].run_id, "--store", str(path), "--json")
    assert p.returncode == 2, p.stdout + p.stderr
    d = json.loads(p.stdout)
    assert "pp64" in d["error"]["message"] and "tg32" in d["error"]["message"] and "verdict" not in d


def test_cli_report_and_runs_list_show_tests_and_compare_like_only(cli, mixed_store, tmp_path):
    path, runs = mixed_store
    ids = [r.run_id for r in runs.values()]
    d = json.loads(cli("report", *ids, "--store", str(path), "-o", str(tmp_path / "r.html"), "--json").stdout)
    assert [(c["run_a"], c["run_b"]) for c in d["comparisons"]] == [(runs["tg32"].run_id, runs["tg32-again"].run_id)]
    listed = json.loads(cli("runs", "list", "--store", str(path), "--json").stdout)["runs"]
    assert {r["run_id"]: r["test"] for r in listed} == {r.run_id: run_kind(r).test for r in runs.values()}
    table = cli("runs", "list", "--store", str(path)).stdout
    for test in ("pp64", "tg32", "score", "train", "forward", "generate"):
        assert test in table
    md = render(list(runs.values()), "md", [])
    assert md  # a report of a mixed set renders with no comparison at all
