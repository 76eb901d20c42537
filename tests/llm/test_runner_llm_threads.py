"""`--threads auto` in the runner's LLM mode, for real: the host runner times decode steps of the tiny
GGUF's fp32 program at every core and at one thread, reports both in its header, runs with the one the
rule picks, and generates exactly the greedy tokens a fixed pool does (the trial's KV cache is a copy's,
not the run's); `edgerun generate` defaults to it and stores the trial in the record, `bench-llm -t auto`
labels its rows. No assertion is on a timing: only that the trial ran, what it reported and what it chose."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from edgerun.core.artifact import read_manifest
from edgerun.export.llm.export import PROMPTS
from edgerun.llm import ArtifactTokenizer, GenerateSettings, generate
from edgerun.runtime.protocol import ThreadsAuto, parse_runner_output
from edgerun.store import Store

pytestmark = pytest.mark.slow

TWO_CORES = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="--threads auto runs no trial on one core")


def _check_trial(trial: ThreadsAuto, threads_in_effect: int, hardware_threads: int) -> None:
    """What the header's trial must say: a decode trial at every core and at one thread, the documented rule."""
    assert trial.measure == "decode" and trial.prompt_tokens >= 1 and trial.decode_steps >= 1
    by_threads = trial.median_by_threads()
    assert set(by_threads) == {1, hardware_threads} and all(v > 0 for v in by_threads.values())
    # one thread unless every core is at least 5 % faster
    expected = 1 if by_threads[1] <= by_threads[hardware_threads] * 105 // 100 else hardware_threads
    assert trial.chosen == expected == threads_in_effect


@TWO_CORES
def test_runner_llm_threads_auto_times_decode_and_keeps_greedy_tokens(tiny_fp32, runner_bundle):
    exe = [str(runner_bundle().path / "edgerun-runner"), "--model", str(tiny_fp32 / "model.pte")]
    m = read_manifest(tiny_fp32)
    eager = m.llm.quality["greedy"]["eager"]
    prompt = ArtifactTokenizer(m).encode(PROMPTS[0], chat=False, system=None)
    assert len(prompt) == m.llm.quality["greedy"]["prompt_tokens"]
    args = ["--llm", "generate", "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", str(len(eager)),
            "--ignore-stop"]

    def run(*extra):
        p = subprocess.run(exe + args + list(extra), capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        return parse_runner_output(p.stdout, exit_code=p.returncode)

    auto = run("--threads", "auto")
    h = auto.header
    _check_trial(h.threads_auto, h.threads, h.hardware_threads)
    # the trial fits the context: a short prefill, then decode steps, all inside the 48 positions
    assert h.threads_auto.prompt_tokens + h.threads_auto.decode_steps <= m.llm.max_context
    ids = {"auto": auto.generations[0].ids}
    for n in (1, h.hardware_threads):
        fixed = run("--threads", str(n))
        assert fixed.header.threads_auto is None and fixed.header.threads == n
        ids[n] = fixed.generations[0].ids
    assert list(ids["auto"]) == list(ids[1]) == list(ids[h.hardware_threads]) == list(eager)
    # scoring after a decode trial: the same log-probabilities as without one
    text = ",".join(str(i) for i in ids["auto"])
    scores = []
    for extra in (("--threads", "auto"), ("--threads", "1")):
        p = subprocess.run(exe + ["--llm", "score", "--prompt-ids", text, *extra], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stdout[-2000:]
        scores.append([json.loads(x) for x in p.stdout.splitlines() if '"perplexity"' in x][0]["nll"])
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)


@TWO_CORES
def test_generate_defaults_to_auto_and_stores_the_trial(tiny_fp32, cli):
    m = read_manifest(tiny_fp32)
    eager = m.llm.quality["greedy"]["eager"]
    record, _ = generate(tiny_fp32, "local://", PROMPTS[0], GenerateSettings(max_new_tokens=32, ignore_stop=True))
    p = record.provenance
    _check_trial(ThreadsAuto.parse(p.threads_auto), p.threads, p.hardware_threads)  # the record keeps its JSON
    assert list(record.llm.ids) == eager  # the trial changed no token
    # the CLI: auto by default, the chosen pool and its trial in --json and in the stored run
    res = cli("generate", str(tiny_fp32), "--prompt", PROMPTS[0], "-n", "4", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["threads_auto"]["chosen"] == out["threads"]
    with Store() as store:  # the session's home, as the CLI's
        stored = store.get(out["run_id"]).provenance
    assert stored.threads == out["threads"] and stored.threads_auto == out["threads_auto"]
    res = cli("generate", str(tiny_fp32), "--prompt", PROMPTS[0], "-n", "4", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["threads"] == 1 and out["threads_auto"] is None


@TWO_CORES
def test_bench_llm_threads_auto_rows_say_the_pool_was_measured(tiny_fp32, cli):
    res = cli("bench-llm", str(tiny_fp32), "-p", "4", "-n", "3", "-r", "1", "-t", "auto", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    rows = out["rows"]
    assert [r["test"] for r in rows] == ["pp4", "tg3"] and all(r["threads_auto"] for r in rows)
    assert all(r["threads"] in (1, os.cpu_count()) for r in rows)
    assert all(f"| {r['threads']} (auto) | {r['test']} |" in out["table"] for r in rows)
    with Store() as store:
        trials = [store.get(r["run_id"]).provenance.threads_auto for r in rows]
    assert all(t["measure"] == "decode" and t["chosen"] == r["threads"] for t, r in zip(trials, rows))
