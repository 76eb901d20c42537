"""Issue 22's sweep over recipes, end to end on ``local://`` with the real runner: ``bench --recipes "A; B"``
stores one cell a recipe, the report marks the front and tabulates it, ``--target-size`` recommends the
fastest cell under the size bound (the expectation derived from the stored records), and each cell's
artifact says what its recipe did (``inspect``: parameters and FLOPs per layer type, sparsify's compressed
size). One sweep, run once for the module."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgerun.core.artifact import read_manifest
from edgerun.report import pareto_fronts, quality_of, recommend, recommendation_text
from edgerun.store import Store

FACTORIES = Path(__file__).resolve().parents[1] / "export"
RECIPES = "sparsify(0.5); lowrank(4)"
TARGET_SIZE = 0.6


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("edgerun")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from edgerun.cli import main; main()"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=600)


@dataclasses.dataclass
class Sweep:
    result: dict
    records: list
    store: Path
    env: dict
    tmp: Path


@pytest.fixture(scope="module")
def sweep(runner_bundle, tmp_path_factory, edgerun_home) -> Sweep:
    runner_bundle("host")
    tmp = tmp_path_factory.mktemp("front")
    env = {"EDGERUN_HOME": str(edgerun_home), "PYTHONPATH": str(FACTORIES), "COLUMNS": "200"}
    store = tmp / "s.sqlite"
    args = ["bench", "factories:tiny", "--recipes", RECIPES, "--devices", f"local://?work_dir={tmp / 'dev'}",
            "--warmup", "0", "--iterations", "3", "--threads", "1", "--target-size", str(TARGET_SIZE),
            "--store", str(store), "-o", str(tmp / "bench.html")]
    p = _cli(*args, "--json", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout)
    with Store(store) as s:
        records = [s.get(r) for r in result["run_ids"]]
    # again, the same recipes in the other spelling, for a person: the same sweep (its id comes from the
    # canonical specs), so it resumes and runs nothing; the recommendation is printed
    again = ["bench", "factories:tiny", "--schemes", "sparsify:ratio=0.5,lowrank:rank=4", *args[4:]]
    human = _cli(*again, env=env)
    assert human.returncode == 0, human.stderr[-3000:]
    result["human"] = " ".join(human.stdout.replace("│", " ").split())
    with Store(store) as s:
        result["stored_after"] = len(s.list(limit=100))
    return Sweep(result, records, store, env, tmp)


def test_two_recipes_are_two_stored_cells_and_the_sweep_resumes(sweep):
    r = sweep.result
    assert not r["failures"] and r["cells"] == 2 and len(r["run_ids"]) == 2
    assert [x.model.scheme for x in sweep.records] == ["sparsify", "lowrank:rank=4"]   # canonical specs
    assert r["sweep_id"] in r["human"] and r["stored_after"] == 2                     # resumed, nothing re-run


def test_target_size_recommends_the_fastest_cell_within_the_bound(sweep):
    recs = sweep.records
    largest = max(x.memory.pte_bytes for x in recs)          # no fp32 cell: the largest is the reference
    within = [x for x in recs if x.memory.pte_bytes <= TARGET_SIZE * largest]
    assert within and len(within) < len(recs), [x.memory.pte_bytes for x in recs]   # the bound chooses
    fastest = min(within, key=lambda x: x.latency.median_ms)
    tied = [x for x in within if x.latency.ci95_low_ms <= fastest.latency.ci95_high_ms]   # CIs reach the fastest's
    expected = max(tied, key=lambda x: (quality_of(x)[0], -x.latency.median_ms))          # then the most accurate
    [item] = sweep.result["recommendation"]
    assert item["recommended"]["run_id"] == expected.run_id and item["source"] == "measured"
    assert item["recommended"]["size_ratio"] == pytest.approx(expected.memory.pte_bytes / largest, abs=1e-4)
    assert item["reference"]["why"] == "largest" and item["within"] == len(within)
    assert sorted(item["equally_fast"]) == sorted(x.run_id for x in tied)
    assert f"{expected.model.scheme} ({expected.run_id})" in sweep.result["human"]
    nothing = recommend(recs, 0.01)
    assert nothing[0]["recommended"] is None and "within 0.01x" in nothing[0]["reason"]


def test_emulated_runs_are_recommended_apart(sweep):
    emulated = [dataclasses.replace(x, source="emulated", run_id=x.run_id + "-emulated") for x in sweep.records]
    items = recommend([*sweep.records, *emulated], TARGET_SIZE)
    assert sorted(i["source"] for i in items) == ["emulated", "measured"]
    by = {i["source"]: i for i in items}
    assert by["emulated"]["recommended"]["run_id"].endswith("-emulated") and "EMULATED" in by["emulated"]["note"]
    assert not by["measured"]["recommended"]["run_id"].endswith("-emulated")


def test_the_report_marks_the_front_and_tabulates_it(sweep):
    ids = sweep.result["run_ids"]
    front = [rid for ids_ in pareto_fronts(sweep.records).values() for rid in ids_]
    assert front and set(front) <= set(ids)
    html = Path(sweep.result["report"]).read_text()
    assert "Pareto front per device" in html and all(rid in html for rid in front)
    md = _cli("report", *ids, "-f", "md", "--store", str(sweep.store), env=sweep.env)
    assert md.returncode == 0, md.stderr[-2000:]
    table = md.stdout[md.stdout.index("## Pareto front per device"):].split("\n\n")[1].splitlines()
    assert table[0].startswith("| device | source | recipe |")
    rows = table[2:]                                                  # after the header and its rule
    assert sorted(row.split("|")[5].strip() for row in rows) == sorted(front)   # run column: exactly the front


def test_each_cell_says_what_its_recipe_did(sweep):
    by = {x.model.scheme: x for x in sweep.records}
    sparse = read_manifest(by["sparsify"].model.artifact)
    assert sparse.ok
    f = sparse.scheme.steps[0].facts
    assert f["program_bytes"] == sparse.pte_bytes and 0 < f["program_compressed_bytes"] < f["program_bytes"]
    assert f["zeros"] >= f["weights"] // 2 and "no speed is claimed" in f["speed"]
    out = _cli("inspect", str(by["lowrank:rank=4"].model.artifact), env=sweep.env)
    assert out.returncode == 0, out.stderr[-2000:]
    text = " ".join(out.stdout.replace("│", " ").split())
    stats = read_manifest(by["lowrank:rank=4"].model.artifact).scheme.steps[0].facts["layer_stats"]
    b, a = stats["before"]["by_type"]["Linear"], stats["after"]["by_type"]["Linear"]
    assert a["flops"] < b["flops"] and a["layers"] == 2 * b["layers"]
    assert f"{b['flops']:,} -> {a['flops']:,}" in text and "FLOPs" in text
    assert "rank chosen per layer: fc1 64x512 -> rank 4" in text


def test_recipes_and_schemes_together_are_refused(tmp_path, edgerun_home):
    p = _cli("bench", "factories:tiny", "--recipes", "int8", "--schemes", "int8", "--store", str(tmp_path / "s"),
             "--json", env={"EDGERUN_HOME": str(edgerun_home), "PYTHONPATH": str(FACTORIES)})
    assert p.returncode == 2 and "--recipes or --schemes, not both" in p.stdout + p.stderr
    assert not (tmp_path / "s").exists()


def test_runs_whose_latency_cannot_be_told_apart_are_chosen_between_by_quality(sweep):
    a, b = sweep.records
    # the same samples' statistics for both (a tie by construction), both within the bound: quality decides
    # (both within the default quality budget of the reference's 0.9, so both are candidates)
    b_like_a = dataclasses.replace(b, latency=a.latency, memory=dataclasses.replace(b.memory, pte_bytes=1),
                                   accuracy=dataclasses.replace(b.accuracy, task_accuracy=0.9))
    a_small = dataclasses.replace(a, memory=dataclasses.replace(a.memory, pte_bytes=1),
                                  accuracy=dataclasses.replace(a.accuracy, task_accuracy=0.89))
    ref = dataclasses.replace(a, run_id="ref", memory=dataclasses.replace(a.memory, pte_bytes=100),
                              accuracy=dataclasses.replace(a.accuracy, task_accuracy=0.9))
    [item] = recommend([ref, a_small, b_like_a], 0.5)
    assert sorted(item["equally_fast"]) == sorted([a.run_id, b.run_id])
    assert item["recommended"]["run_id"] == b.run_id and item["recommended"]["quality"] == 0.9


def test_llm_score_runs_are_fronted_and_recommended_by_perplexity(sweep):
    from edgerun.report import frontier_rows, plot_pareto
    from edgerun.runtime.record import LLMMetrics

    a, b = sweep.records

    def score(rec, run_id, ppl, size):
        return dataclasses.replace(rec, run_id=run_id, accuracy=None, llm=LLMMetrics(test="score", perplexity=ppl),
                                   memory=dataclasses.replace(rec.memory, pte_bytes=size))

    fast, slow = sorted((a, b), key=lambda r: r.latency.median_ms)
    runs = [score(fast, "r-fast-bad", 30.0, 100), score(slow, "r-slow-good", 12.0, 100),
            score(slow, "r-slow-worse", 40.0, 100)]                 # dominated: as slow, as big, worse perplexity
    assert sorted(pareto_fronts(runs)[("local:// · score", "measured")]) == ["r-fast-bad", "r-slow-good"]
    rows = frontier_rows(runs)
    assert [r[4] for r in rows] == ["r-fast-bad", "r-slow-good"] and rows[1][-1] == "perplexity 12.000"
    assert plot_pareto(runs)[:8] == b"\x89PNG\r\n\x1a\n"


def _cell(rec, run_id, *, size, median, accuracy=None, ppl=None, llm=False):
    """A copy of a stored run with its own id, size, latency (a tight CI around ``median``) and quality."""
    from edgerun.runtime.record import LLMMetrics

    lat = dataclasses.replace(rec.latency, median_ms=median, ci95_low_ms=median * 0.99, ci95_high_ms=median * 1.01)
    return dataclasses.replace(
        rec, run_id=run_id, latency=lat, memory=dataclasses.replace(rec.memory, pte_bytes=size),
        accuracy=None if llm or accuracy is None else dataclasses.replace(rec.accuracy, task_accuracy=accuracy),
        llm=LLMMetrics(test="score", perplexity=ppl) if llm else rec.llm)


def _digits_like(sweep):
    """The measured case of the issue: a pruned+int8 cell that is faster than its distilled twin but lost
    the task (11 % against 98 %)."""
    a = sweep.records[0]
    return [_cell(a, "r-ref", size=100, median=1.0, accuracy=0.981),
            _cell(a, "r-broken", size=30, median=0.226, accuracy=0.111),
            _cell(a, "r-distilled", size=30, median=0.238, accuracy=0.981)]


def test_a_fastest_cell_that_lost_its_accuracy_is_not_recommended(sweep):
    [item] = recommend(_digits_like(sweep), TARGET_SIZE)
    assert item["recommended"]["run_id"] == "r-distilled" and item["equally_fast"] == ["r-distilled"]
    assert item["excluded_for_quality"] == ["r-broken"] and item["unknown_quality"] == []
    budget = item["quality_budget"]
    assert budget["measure"] == "task accuracy" and budget["reference"] == pytest.approx(0.981)
    assert budget["limit"] == pytest.approx(0.961) and item["within"] == 2 and item["within_budget"] == 1
    text = recommendation_text(item)
    assert "quality budget (task accuracy >= 96.10%" in text and "excluded: r-broken" in text, text


def test_a_wider_quality_budget_lets_the_fastest_back_in(sweep):
    [item] = recommend(_digits_like(sweep), TARGET_SIZE, max_quality_loss=0.9)
    assert item["recommended"]["run_id"] == "r-broken" and item["excluded_for_quality"] == []
    assert item["quality_budget"]["limit"] == pytest.approx(0.081)
    assert "quality budget" not in recommendation_text(item)         # named only when it excluded a run
    with pytest.raises(Exception, match="max-quality-loss"):
        recommend(_digits_like(sweep), TARGET_SIZE, max_quality_loss=-0.1)


def test_a_run_of_unknown_quality_is_not_recommended(sweep):
    a = sweep.records[0]
    runs = [*_digits_like(sweep)[::2], _cell(a, "r-unmeasured", size=30, median=0.1)]
    runs[-1] = dataclasses.replace(runs[-1], accuracy=None)
    [item] = recommend(runs, TARGET_SIZE)
    assert item["recommended"]["run_id"] == "r-distilled"
    assert item["excluded_for_quality"] == item["unknown_quality"] == ["r-unmeasured"]
    assert "of which no quality measured: r-unmeasured" in recommendation_text(item)


def test_nothing_within_size_and_budget_names_what_the_budget_excluded(sweep):
    runs = _digits_like(sweep)[:2]                                      # the distilled cell is not there
    [item] = recommend(runs, TARGET_SIZE)
    assert item["recommended"] is None and item["excluded_for_quality"] == ["r-broken"]
    assert "r-broken" in item["reason"] and "11.10%" in item["reason"] and "96.10%" in item["reason"], item["reason"]
    assert recommendation_text(item).startswith(f"{item['model']} on {item['device']}: nothing fits "
                                                f"--target-size {TARGET_SIZE:g} and the quality budget")


def test_an_llm_is_budgeted_by_its_perplexity_on_the_device(sweep):
    a = sweep.records[0]
    runs = [_cell(a, "r-fp32", size=100, median=10.0, ppl=10.0, llm=True),
            _cell(a, "r-q4", size=30, median=4.0, ppl=12.0, llm=True),     # +20 %: over the default 15 %
            _cell(a, "r-q8", size=50, median=6.0, ppl=11.0, llm=True)]     # +10 %
    [item] = recommend(runs, TARGET_SIZE)
    assert item["device"].endswith("score") and item["quality_budget"]["measure"] == "perplexity"
    assert item["quality_budget"]["limit"] == pytest.approx(11.5)
    assert item["recommended"]["run_id"] == "r-q8" and item["excluded_for_quality"] == ["r-q4"]
    assert "perplexity <= 11.5" in recommendation_text(item)
    [wide] = recommend(runs, TARGET_SIZE, max_quality_loss=0.25)
    assert wide["recommended"]["run_id"] == "r-q4"


def test_max_quality_loss_needs_target_size(tmp_path, edgerun_home):
    p = _cli("bench", "factories:tiny", "--recipes", "int8", "--max-quality-loss", "0.05",
             "--store", str(tmp_path / "s"), "--json",
             env={"EDGERUN_HOME": str(edgerun_home), "PYTHONPATH": str(FACTORIES)})
    assert p.returncode == 2 and "needs --target-size" in p.stdout + p.stderr, p.stdout + p.stderr
    assert not (tmp_path / "s").exists()
