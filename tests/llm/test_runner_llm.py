"""The runner's LLM mode for real: the tiny GGUF's fp32 program generates on the host runner, under
qemu-aarch64 (cortex-a76) and over a real sshd exactly the tokens eager PyTorch chose at export,
scores the held-out text to the export's perplexity, samples deterministically from a seed, and its
runs are stored records that `edgerun compare` reads."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from edgerun.core.artifact import read_manifest
from edgerun.core.errors import UsageError
from edgerun.devices.inventory import resolve_device
from edgerun.export.llm.export import PROMPTS
from edgerun.llm import ArtifactTokenizer, BenchLLMSettings, GenerateSettings, TokenStream, bench_llm, generate, \
    perplexity_on_device
from edgerun.runtime.llm import LLMRequest
from edgerun.runtime.protocol import parse_runner_output
from edgerun.runtime.record import compare_records

pytestmark = pytest.mark.slow

GREEDY = GenerateSettings(max_new_tokens=32, ignore_stop=True, threads=1)


def _eager_greedy(art):
    m = read_manifest(art)
    return m, m.llm.quality["greedy"]["eager"]


def test_host_runner_generates_eagers_greedy_tokens(tiny_fp32):
    m, eager = _eager_greedy(tiny_fp32)
    seen: list[str] = []
    record, ids = generate(tiny_fp32, "local://", PROMPTS[0], GREEDY, on_text=seen.append)
    assert len(ids) == m.llm.quality["greedy"]["prompt_tokens"]
    assert list(record.llm.ids) == eager and len(eager) == 32
    assert record.llm.decode_forwards == 31 and record.latency.n == 31  # one sample per decode step
    assert record.llm.prefill_tokens_per_s > 0 and record.llm.decode_tokens_per_s > 0 and record.llm.ttft_ms > 0
    assert record.memory.peak_rss_bytes > 0 and record.llm.kv_cache_bytes == m.llm.kv_cache_bytes
    tok = ArtifactTokenizer(m)
    assert "".join(seen) == tok.decode(eager).rstrip("\ufffd") or "".join(seen) == tok.decode(eager)


@pytest.mark.qemu
def test_qemu_cortex_a76_generates_the_same_tokens(tiny_fp32, runner_bundle, need):
    need("qemu-aarch64", "qemu-user")
    runner_bundle("aarch64")
    _, eager = _eager_greedy(tiny_fp32)
    record, _ = generate(tiny_fp32, "qemu-aarch64://?cpu=cortex-a76", PROMPTS[0], GREEDY)
    assert record.source == "emulated" and record.device.arch == "aarch64"
    assert list(record.llm.ids) == eager


@pytest.mark.qemu
def test_qemu_cortex_a76_runs_a_program_with_its_data_file(tiny_8da4w, runner_bundle, need):
    """The aarch64 bundle's runner takes --ptd too: 8da4w's shared table resolves from model.ptd there."""
    need("qemu-aarch64", "qemu-user")
    runner_bundle("aarch64")
    m = read_manifest(tiny_8da4w)
    record, _ = generate(tiny_8da4w, "qemu-aarch64://?cpu=cortex-a76", PROMPTS[0],
                         GenerateSettings(max_new_tokens=8, ignore_stop=True, threads=1))
    assert record.source == "emulated" and list(record.llm.ids) == list(m.llm.quality["greedy"]["program"][:8])


def test_over_ssh_generate_and_bench_records_compare(tiny_fp32, loopback_sshd, cli):
    _, eager = _eager_greedy(tiny_fp32)
    uri = loopback_sshd.uri()
    streamed: list[str] = []
    ssh_rec, _ = generate(tiny_fp32, uri, PROMPTS[0], GREEDY, on_text=streamed.append)
    assert list(ssh_rec.llm.ids) == eager and streamed
    local_rec, _ = generate(tiny_fp32, "local://", PROMPTS[0], GREEDY)
    c = compare_records(local_rec, ssh_rec)
    names = {d.metric for d in c.metrics}
    assert {"decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms"} <= names
    res = cli("compare", local_rec.run_id, ssh_rec.run_id, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert any(m["metric"] == "decode_tokens_per_s" and m["a"] and m["b"] for m in out["metrics"])

    recs = bench_llm(tiny_fp32, ["local://", uri], BenchLLMSettings(prompts=(8,), generate=(4,), repetitions=2,
                                                                    threads=(1,), warmup=0))
    assert all(hasattr(r, "llm") for r in recs), [getattr(r, "error", r) for r in recs]
    tests = sorted((r.device_name.startswith("ssh:"), r.llm.test) for r in recs)
    assert tests == [(False, "pp8"), (False, "tg4"), (True, "pp8"), (True, "tg4")]
    from edgerun.report import render

    html = render(recs + [ssh_rec], "html")
    assert "LLM: tokens/s and memory" in html and "tokens per second" in html
    for r in recs:
        assert r.llm.repetitions == 2 and r.llm.same_ids_every_repetition
        if r.llm.test == "tg4":
            assert r.llm.decode_forwards == 4 and r.latency.n == 8  # 4 decode steps x 2 repetitions
        else:
            assert r.llm.decode_tokens_per_s is None and r.latency.n == 2  # one prefill per repetition


def test_score_on_the_device_reproduces_the_exports_perplexity(tiny_fp32):
    m = read_manifest(tiny_fp32)
    with resolve_device("local://", None) as dev:
        rec = perplexity_on_device(tiny_fp32, dev, threads=1)
    ppl = m.llm.quality["perplexity"]
    assert rec.llm.perplexity_window == ppl["window"] and rec.llm.perplexity_tokens == ppl["tokens"] - 1
    assert rec.llm.eager_perplexity == ppl["eager_fp32"]
    assert rec.llm.perplexity == pytest.approx(ppl["program"], rel=1e-6)
    lp = np.load(_newest_run_with("logprobs.npy") / "logprobs.npy")
    assert lp.shape == (ppl["tokens"] - 1,) and np.all(lp <= 0)
    assert np.exp(-lp.mean()) == pytest.approx(rec.llm.perplexity, rel=1e-9)


def test_a_program_with_its_data_file_generates_and_scores_as_at_export(tiny_8da4w):
    """8da4w's tied table lives in model.ptd: deploy sends it, the runner loads it (--ptd), and the program
    generates the greedy tokens pybindings' run of it chose at export and scores the export's perplexity."""
    m = read_manifest(tiny_8da4w)
    assert m.data_bytes, "the tiny 8da4w export should keep its tied table in a data file"
    record, _ = generate(tiny_8da4w, "local://", PROMPTS[0], GREEDY)
    assert list(record.llm.ids) == list(m.llm.quality["greedy"]["program"])
    assert record.memory.pte_bytes == m.pte_bytes + m.data_bytes
    with resolve_device("local://", None) as dev:
        rec = perplexity_on_device(tiny_8da4w, dev, threads=1)
    assert rec.llm.perplexity == pytest.approx(m.llm.quality["perplexity"]["program"], rel=1e-4)


def _newest_run_with(name: str):
    from edgerun.core.paths import runs_dir

    return max((p for p in runs_dir().iterdir() if (p / name).is_file()), key=lambda p: (p / name).stat().st_mtime)


def test_sampling_is_deterministic_for_a_seed(tiny_fp32):
    s = GenerateSettings(max_new_tokens=12, temperature=0.9, top_k=50, top_p=0.95, seed=7, threads=1, repeat=2,
                         ignore_stop=True)
    a, _ = generate(tiny_fp32, "local://", PROMPTS[1], s)
    b, _ = generate(tiny_fp32, "local://", PROMPTS[1], s)
    assert a.llm.ids == b.llm.ids and a.llm.same_ids_every_repetition
    others = {generate(tiny_fp32, "local://", PROMPTS[1], GenerateSettings(
        max_new_tokens=12, temperature=0.9, seed=seed, threads=1, ignore_stop=True))[0].llm.ids for seed in (1, 2, 3)}
    assert len(others | {a.llm.ids}) > 1, "different seeds never changed a sampled token"


def test_the_runner_refuses_bad_llm_requests_clearly(tiny_fp32, runner_bundle, make_artifact, tmp_path):
    bundle = runner_bundle()
    exe = [str(bundle.path / "edgerun-runner"), "--model", str(tiny_fp32 / "model.pte")]

    def run(*args):
        p = subprocess.run(exe + list(args), capture_output=True, text=True, timeout=120)
        return p.returncode, parse_runner_output(p.stdout, exit_code=p.returncode)

    rc, r = run("--llm", "generate", "--prompt-ids", "1,2,999")
    assert rc == 11 and "id 999, outside the program's vocabulary 0..383" in r.error.message
    rc, r = run("--llm", "generate", "--prompt-ids", ",".join(["1"] * 49))
    assert rc == 11 and "max context is 48" in r.error.message
    rc, r = run("--llm", "generate")
    assert rc == 2 and "needs token ids" in r.error.message
    (tmp_path / "ids.txt").write_text("1 2 three")
    rc, r = run("--llm", "score", "--tokens", str(tmp_path / "ids.txt"))
    assert rc == 11 and "'three' (item 2) is not a token id" in r.error.message
    digits = make_artifact("digits_cnn", "host", "fp32")
    p = subprocess.run([exe[0], "--model", str(digits / "model.pte"), "--llm", "generate", "--prompt-ids", "1"],
                       capture_output=True, text=True, timeout=120)
    r = parse_runner_output(p.stdout, exit_code=p.returncode)
    assert p.returncode == 11 and "tokens [1,T] int64, input_pos [T] int64" in r.error.message
    # a prompt longer than the artifact's context is refused before any device is touched
    m = read_manifest(tiny_fp32)
    with pytest.raises(UsageError, match="max context of 48"):
        LLMRequest(prompt_ids=tuple([1] * 49)).check(m)


def test_token_stream_shows_the_first_timed_repetition_only():
    # token lines as PROTOCOL.md has them (the stream reads them with the protocol's own line parser)
    tok = {"type": "token", "source": "decode", "execute_ns": 1000}
    lines = [{**tok, "repeat": 0, "warmup": True, "index": 0, "id": 9},
             {**tok, "repeat": 0, "warmup": False, "index": 0, "id": 1},
             {**tok, "repeat": 0, "warmup": False, "index": 1, "id": 2},
             {**tok, "repeat": 0, "warmup": False, "index": 2, "id": 5},  # a stop id: not shown
             {**tok, "repeat": 1, "warmup": False, "index": 0, "id": 3},
             {"type": "token", "repeat": 0, "warmup": False, "index": 3, "id": 7}]  # not a protocol line: skipped
    raw = "".join(json.dumps(x) + "\n" for x in lines).encode()
    shown: list[str] = []
    stream = TokenStream(lambda ids: "".join(f"<{i}>" for i in ids), shown.append, stop_ids=[5])
    for k in range(0, len(raw), 7):  # chunks split lines anywhere
        stream(raw[k:k + 7])
    assert stream.ids == [1, 2] and "".join(shown) == "<1><2>"


def test_cli_generate_json_and_bench_llm_csv(tiny_fp32, cli):
    res = cli("generate", str(tiny_fp32), "--prompt", PROMPTS[0], "-n", "5", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["ids"]) <= 5 and isinstance(out["text"], str) and out["decode_tokens_per_s"] is not None
    res = cli("bench-llm", str(tiny_fp32), "-p", "8", "-n", "4", "-r", "2", "-t", "1", "-o", "csv")
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.strip().splitlines()
    assert header.startswith("run_id,model,scheme") and len(rows) == 2
    res = cli("generate", str(tiny_fp32), "--prompt", "x" * 400, "--json")
    assert res.returncode == 2 and "max context of 48" in json.loads(res.stdout)["error"]["message"]


def test_profile_of_an_llm_artifact_also_scores_its_heldout_text(tiny_fp32, cli):
    res = cli("profile", str(tiny_fp32), "--iterations", "2", "--warmup", "0", "--threads", "1", "--no-etdump", "--json")
    assert res.returncode == 0, res.stderr
    runs = json.loads(res.stdout)["runs"]
    ppl = [r for r in runs if (r.get("llm") or {}).get("perplexity")]
    assert len(runs) == 2 and len(ppl) == 1
    m = read_manifest(tiny_fp32)
    assert ppl[0]["llm"]["perplexity"] == pytest.approx(m.llm.quality["perplexity"]["program"], rel=1e-6)
    assert ppl[0]["llm"]["eager_perplexity"] == m.llm.quality["perplexity"]["eager_fp32"]


def test_bench_llm_profile_splits_a_decode_step_by_kind_of_work(tiny_fp32, cli, tmp_path):
    """--profile: each test's record carries the operator table of its forwards -- for tgN every forward is
    single-token, so the table is a decode step's -- and the split sums a kind of delegate call over its calls
    (one per layer). The tokens/s of a profiled run are labelled as including the tracing."""
    from edgerun.llm import PROFILED_WARNING
    from edgerun.store import Store

    store = tmp_path / "runs.sqlite"
    res = cli("bench-llm", str(tiny_fp32), "-p", "8", "-n", "4", "-r", "2", "-t", "1", "--profile",
              "--store", str(store), "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["test"]: r for r in json.loads(res.stdout)["rows"]}
    assert set(rows) == {"pp8", "tg4"}
    with Store(store) as s:
        records = {t: s.get(r["run_id"]) for t, r in rows.items()}
    for test, forwards in (("pp8", 2), ("tg4", 2 * (4 + 1))):  # tgN: the one-token prompt's forward + N steps
        rec, split = records[test], rows[test]["operators"]
        assert PROFILED_WARNING in rec.warnings
        assert rec.operators.iterations == forwards == split["iterations"]
        grouped = rec.operators.grouped()
        # every call of a forward is in exactly one group, and the groups' times add up to the forward's
        assert sum(g.count for g in grouped) == sum(r.count for r in rec.operators.rows)
        per_forward = np.sum([r.samples_ms for r in rec.operators.rows], axis=0)
        assert np.sum([g.samples_ms for g in grouped], axis=0) == pytest.approx(per_forward, rel=1e-9)
        assert len(grouped) <= len(rec.operators.rows)
        assert [o["name"] for o in split["rows"]] == [g.name for g in grouped[:8]]
    # a decode step calls the delegate once per partition; grouped, those calls are few rows, not one per call
    calls = [r for r in records["tg4"].operators.rows if r.kind == "delegate_call"]
    assert len(calls) > 1 and any(g.count > 1 for g in records["tg4"].operators.grouped())
    from edgerun.cli.llm_cmd import _split_text

    text = _split_text(rows["tg4"])  # what a person reads under the table
    assert text.startswith("tg4 threads=1: one forward") and f"edgerun runs show {rows['tg4']['run_id']}" in text
    assert len(text.splitlines()) == 1 + len(rows["tg4"]["operators"]["rows"]) + bool(rows["tg4"]["operators"]["others"])


def test_the_runner_runs_programs_with_and_without_cache_positions(tiny_gguf, tiny_fp32, runner_bundle, tmp_path):
    """Programs of layout 3 take the cache's valid prefix as a third input, earlier ones do not: the runner
    reads which from the method and generates eager PyTorch's greedy tokens with both."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    from edgerun.export.llm.gguf_model import greedy, load_llama

    exe = str(runner_bundle().path / "edgerun-runner")

    def generate(pte, prompt, n):
        got = {}
        for policy in ("always", "on-change"):  # ExecuTorch's per-step XNNPACK reshapes and setups, or the runner's
            p = subprocess.run([exe, "--model", str(pte), "--llm", "generate", "--prompt-ids", ",".join(map(str, prompt)),
                                "--max-new-tokens", str(n), "--ignore-stop", "--threads", "1",
                                "--xnnpack-reshape", policy], capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
            r = parse_runner_output(p.stdout, exit_code=p.returncode)
            got[policy] = (r.llm.cache_positions, list(r.generations[0].ids))
            calls = r.summary.xnnpack_calls
            assert calls.reshapes > 0 and (calls.reshapes_skipped > 0) == (policy == "on-change")
        assert got["always"] == got["on-change"]
        return got["on-change"]

    # what edgerun exports now (the exported artifact's own greedy tokens are checked above)
    m, eager = _eager_greedy(tiny_fp32)
    ids = ArtifactTokenizer(m).encode(PROMPTS[0])
    assert generate(tiny_fp32 / "model.pte", ids, 8) == (True, eager[:8])
    # a program of layout 2 (two inputs, attention over the whole cache), as artifacts made before were
    model, _ = load_llama(tiny_gguf, max_context=24)
    t = torch.export.Dim("T", min=1, max=24)
    ep = torch.export.export(model, (torch.arange(4)[None], torch.arange(4)),
                             dynamic_shapes={"tokens": {1: t}, "input_pos": {0: t}})
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                          compile_config=EdgeCompileConfig(_check_ir_validity=False))
    pte = tmp_path / "layout2.pte"
    pte.write_bytes(program.to_executorch(ExecutorchBackendConfig(run_reinplace_pass=True)).buffer)
    model.reset_cache()
    prompt = [3, 1, 4, 1, 5]
    assert generate(pte, prompt, 12) == (False, greedy(model, prompt, 12))
