"""`edgerun export` of an LLM: the tiny GGUF made here goes to a verified artifact with a KV cache,
a dynamic prompt length, tokenizer.json and the manifest's llm facts; fp32 reproduces eager's greedy
tokens, and 8da4w quantizes the embedding and the LM head with kernels the native runner has."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from edgerun.core.artifact import read_manifest
from edgerun.core.errors import UsageError
from edgerun.export import ExportOptions, export_model
from edgerun.export.zoo import get_model
from edgerun.export.llm.zoo import LLMSpec


def test_a_gguf_path_and_smollm2_are_llm_specs(tiny_gguf, tmp_path):
    spec = get_model(str(tiny_gguf))
    assert isinstance(spec, LLMSpec) and spec.source == "gguf" and spec.task == "llm"
    model, (tokens, pos) = spec.build()
    assert tokens.shape[0] == 1 and tuple(pos.shape) == (tokens.shape[1],)
    assert isinstance(get_model("smollm2-135m"), LLMSpec)
    with pytest.raises(UsageError, match=r"absent\.gguf.*no such file"):
        get_model(str(tmp_path / "absent.gguf"))


@pytest.mark.parametrize("kwargs,words", [
    ({"options": ExportOptions(calibration="calib.npy")}, "--calibration calib.npy: an LLM export runs no calibration"),
    ({"options": ExportOptions(vectors_file="v.npz")}, "--vectors v.npz: an LLM export's test vectors are its"),
    ({"options": ExportOptions(vectors=9)}, "--vectors 9: an LLM export has 4 prompts"),
    ({"example_inputs": (1,)}, "example_inputs and name apply to a model given as a Python object"),
    ({"scheme": "int8"}, "recipe 'int8' has no handler for an LLM"),
    ({"scheme": "8da4w:group_size=48"}, "group_size must be a positive power of two"),
])
def test_a_gguf_export_refuses_what_it_cannot_honour_before_any_work(tiny_gguf, tmp_path, kwargs, words):
    """`edgerun export x.gguf --calibration c` used to run for minutes and ignore the file."""
    started: list[str] = []
    kwargs = {"scheme": "fp32", **kwargs}
    with pytest.raises(UsageError) as info:
        export_model(str(tiny_gguf), "rpi5", out_dir=tmp_path / "x", max_context=48, on_stage=started.append,
                     **kwargs)
    assert words in info.value.paragraph()
    assert started == ["resolve"] and not (tmp_path / "x").exists()


def test_the_cli_refuses_calibration_for_a_gguf(tiny_gguf, tmp_path, cli):
    calib = tmp_path / "calib.npy"
    calib.write_bytes(b"x")
    res = cli("export", str(tiny_gguf), "--target", "rpi5", "--calibration", str(calib), "-o", str(tmp_path / "a"),
              "--json")
    assert res.returncode == 2, res.stderr
    err = json.loads(res.stdout)["error"]
    assert err["type"] == "UsageError" and "an LLM export runs no calibration inputs" in err["message"]
    assert not (tmp_path / "a").exists()


def test_max_context_is_refused_for_a_model_that_is_not_an_llm(tmp_path):
    with pytest.raises(UsageError, match="--max-context applies to LLMs only"):
        export_model("digits_cnn", "host", "fp32", tmp_path / "a", max_context=64)


@pytest.mark.slow
def test_bench_finds_an_llm_export_by_the_hash_the_export_writes(tiny_gguf, tmp_path):
    # bench keys its artifact cache by the recipe identity and checks a finished export against it; an LLM's
    # export adds its GGUF's hash and max context, which bench did not: every LLM cell failed after exporting
    # (and its artifact was removed as foreign)
    import shutil

    from edgerun.profiling import _cached, ensure_artifact, export_job  # noqa: PLC2701 - bench's cache check

    job = export_job(str(tiny_gguf), "host", "fp32")
    path = ensure_artifact(str(tiny_gguf), "host", "fp32")
    m = read_manifest(path)
    assert path == job.path and m.ok and m.recipe_hash == job.recipe_hash and _cached(job)
    assert m.recipe.model["gguf_sha256"] and m.recipe.model["max_context"] == m.llm.max_context
    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert ensure_artifact(str(tiny_gguf), "host", "fp32") == path
    assert (path / "manifest.json").stat().st_mtime_ns == stamp          # reused, not exported again
    # the same GGUF path with other bytes is another program
    gguf = tmp_path / "tiny.gguf"
    shutil.copy(tiny_gguf, gguf)
    before = export_job(str(gguf), "host", "fp32").recipe_hash
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 1
    gguf.write_bytes(bytes(data))
    assert export_job(str(gguf), "host", "fp32").recipe_hash != before


def test_bench_on_an_llm_is_one_cell_with_its_held_out_score(tiny_gguf, runner_bundle, tmp_path):
    # bench end to end on a GGUF (its export is the one test_bench_finds_an_llm_export_... cached): one cell, counted
    # once, whose records are the forward run and the held-out score run with the device's perplexity
    from edgerun.profiling import ProfileSettings, bench
    from edgerun.store import Store

    runner_bundle()
    calls: list[tuple[str, str]] = []
    settings = ProfileSettings(warmup=1, iterations=3, threads=(1,))
    with Store(tmp_path / "runs.sqlite") as s:
        summary = bench(str(tiny_gguf), ["host"], ["fp32"], ["local://"], settings, store=s,
                        on_cell=lambda key, what: calls.append((key, what)))
        records = [s.get(r) for r in summary["run_ids"]]
    assert not summary["failures"] and len(calls) == 1, calls
    score = [r for r in records if r.llm is not None and r.llm.perplexity is not None]
    assert len(score) == 1 and score[0].llm.perplexity == pytest.approx(score[0].llm.eager_perplexity, rel=1e-3)


def test_fp32_export_of_the_tiny_gguf_matches_eager(tiny_fp32):
    m = read_manifest(tiny_fp32)  # exported once per session by the fixture (max context 48)
    assert m.ok, m.verification.failures
    assert type(m.llm).from_json(m.llm.to_json(), "llm") == m.llm  # the llm facts survive a JSON round trip
    llm = m.llm
    assert (llm.architecture, llm.layers, llm.dim, llm.max_context) == ("llama", 2, 64, 48)
    assert llm.kv_cache_bytes_per_token == 2 * 2 * 2 * 16 * 4 and llm.kv_cache_bytes == 48 * 512
    # the tied embedding is counted once; constants: the RoPE cos/sin tables ([max_context, head_dim] each) and
    # each layer's RoPE rotation matrix ([head_dim, head_dim])
    assert llm.weight_bytes_by_dtype["float32"] == 4 * llm.parameters + 2 * 48 * 16 * 4 + 2 * 16 * 16 * 4
    tok = Tokenizer.from_file(str(tiny_fp32 / "tokenizer.json"))
    assert llm.tokenizer["sha256"] and tok.encode("<|im_start|>").ids == [1]
    q = llm.quality
    assert q["greedy"]["eager"] == q["greedy"]["program"] and len(q["greedy"]["eager"]) == 32
    assert q["logits_vs_eager"]["top1_agreement"] == 1.0
    assert abs(q["perplexity"]["program_vs_eager_fp32"]) < 0.01
    assert json.loads((tiny_fp32 / "manifest.json").read_text())["llm"]["max_context"] == 48


def test_a_step_is_two_delegate_calls_a_layer_and_writes_the_kv_cache_in_place(tiny_fp32):
    """The program's shape that decode speed rests on (issue 23): per layer one XNNPACK partition before the
    cache write and one after (and at most two around the layers: the head, the first norm), the cache written
    by index_put_ on the buffer itself, only its valid prefix copied out for attention, and no other portable
    copy of the cache (copy_ back into the buffer, a transposed or broadcast copy) or of RoPE pairs."""
    m = json.loads((tiny_fp32 / "manifest.json").read_text())
    layers, ops = m["llm"]["layers"], m["operators"]
    assert ops["delegated"]["XnnpackBackend"] <= 2 * layers + 2, ops["delegated"]   # was ~10 a layer
    portable = ops["non_delegated"]
    assert portable.get("aten::index_put_") == 2 * layers, portable
    # attention reads the cache's valid prefix: one copy of it for the keys and one for the values a layer
    assert portable.get("aten::slice_copy.Tensor_out") == 2 * layers, portable
    for copy in ("aten::index_put.out", "aten::copy_", "aten::permute_copy.out", "aten::expand_copy.out",
                 "aten::select_copy.int_out", "aten::mean.out", "aten::bmm.out"):
        assert copy not in portable, (copy, portable)


@pytest.mark.slow
def test_8da4w_export_via_the_cli_quantizes_embedding_and_lm_head_and_shows_its_progress(tiny_gguf, tiny_fp32,
                                                                                           tmp_path, cli):
    """The CLI with stderr piped (as in a CI log): a line per stage as it ends, and lines with the fraction
    of the long stages (quantize per layer, lower per delegate partition, verify per window/prompt/token)."""
    fp32 = read_manifest(tiny_fp32)
    res = cli("export", str(tiny_gguf), "--target", "rpi5", "--scheme", "8da4w(int8_layers=attention/ffn_down)",
              "--group-size", "32", "--embedding-bits", "4", "--max-context", "48", "-o", str(tmp_path / "q"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ok"] is True          # stdout is the one JSON object
    stages = re.findall(r"^export: ([a-z ]+) … \d+\.\d s$", res.stderr, re.M)
    assert stages == ["resolve", "load model", "reference", "quantize", "export", "lower", "write", "verify"]
    fractions = re.findall(r"^export: ([a-z ]+) (\d+)% \((.+)\) \d+ s$", res.stderr, re.M)
    first = {name: detail for name, _, detail in reversed(fractions)}
    assert first["quantize"] == "layer 1/2" and first["reference"].startswith("window 1/")
    assert first["lower"] == "decomposing to the edge dialect, partitioning", first
    assert all(re.fullmatch(r"XnnpackBackend partition \d+/\d+|memory planning, emitting", detail)
               for name, _, detail in fractions[fractions.index(("lower", "0", first["lower"])) + 1:]
               if name == "lower"), fractions
    assert first["verify"].startswith("step 1/")
    m = read_manifest(tmp_path / "q")
    assert m.ok, m.verification.failures
    assert set(m.stage_seconds) == set(stages)
    assert m.scheme.recipe.startswith("8da4w:") and "embedding_bits=4" in m.scheme.recipe
    assert [s.kind for s in m.scheme.steps] == ["quantize"]
    assert m.scheme.facts["int4_linear_layers"] > 0 and m.scheme.steps[0].facts == m.scheme.facts
    ops = m.operators.non_delegated
    assert any("embedding_4bit" in k for k in ops), ops
    assert m.llm.weight_bytes_by_dtype.get("float32", 0) < fp32.llm.weight_bytes_by_dtype["float32"] / 10
    assert m.pte_bytes < 0.5 * fp32.pte_bytes
    assert m.llm.quality["logits_vs_eager"]["top1_agreement"] > 0.5
    # eager fp32's perplexity is measured before quantizing; the program's is compared with it as before
    ppl = m.llm.quality["perplexity"]
    assert ppl["eager_fp32"] == fp32.llm.quality["perplexity"]["eager_fp32"]
    assert ppl["program_vs_eager_fp32"] == pytest.approx(ppl["program"] / ppl["eager_fp32"] - 1)


@pytest.mark.slow
def test_the_etrecord_of_an_llm_keeps_graphs_and_maps_but_not_weight_values(tiny_fp32):
    from executorch.devtools.etrecord import parse_etrecord

    m = read_manifest(tiny_fp32)
    rec = parse_etrecord(str(m.etrecord_path))
    assert rec._debug_handle_map and rec._delegate_map
    weights = dict(rec.edge_dialect_program.state_dict)
    assert weights and all(t.device.type == "meta" for t in weights.values())
    with zipfile.ZipFile(m.etrecord_path) as z:   # the state dicts hold shapes and dtypes, no weight data
        state = {i.filename: i.file_size for i in z.infolist() if i.filename.endswith("_state_dict")}
    assert state and max(state.values()) < m.llm.weight_bytes_by_dtype["float32"] / 10, state


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_killed_llm_export_leaves_no_partial_directory(tiny_gguf, tmp_path, sig):
    """Issue 26: a killed export left a hidden .NAME.partial-* directory until the next export."""
    exe = Path(sys.executable).with_name("edgerun")
    out = tmp_path / "killed"
    proc = subprocess.Popen([str(exe), "export", str(tiny_gguf), "--target", "rpi5", "--scheme", "fp32",
                             "--max-context", "48", "-o", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # see test_hall_ctrl_c
    try:
        for line in proc.stderr:            # the temporary directory exists once a stage has run
            if line.startswith("export: load model …"):
                break
        assert list(tmp_path.glob(".killed.partial-*")), "no temporary directory while exporting"
        proc.send_signal(sig)
        rest = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    assert list(tmp_path.iterdir()) == []


def test_8da4w_embedding_bits_picks_the_table_kernel(tiny_gguf):
    """The default --embedding-bits 8 keeps the embedding table at a byte per code (embedding_byte, one scale
    a row); 4 packs two codes a byte (embedding_4bit, a scale per group); bad values are refused."""
    import pytest as _pytest

    from edgerun.export.llm.gguf_model import load_llama
    from edgerun.export.llm.quantize import quantize_llama
    from edgerun.export.schemes import make_scheme

    model, _ = load_llama(tiny_gguf, max_context=16)
    # an int4 head: the tied table is the embedding's own (an int8 head shares its table, see below)
    q8, facts8 = quantize_llama(model, make_scheme("8da4w", int8_layers="none"))
    q4, facts4 = quantize_llama(model, make_scheme("8da4w", int8_layers="none", embedding_bits=4))
    assert "embedding_byte" in facts8["embedding"] and q8.tok_embeddings.bits == 8
    assert q8.tok_embeddings.weight.shape == model.tok_embeddings.weight.shape
    assert "embedding_4bit" in facts4["embedding"] and q4.tok_embeddings.weight.shape[1] * 2 == model.config.dim
    with _pytest.raises(UsageError, match="embedding_bits must be 4 or 8"):
        make_scheme("8da4w", embedding_bits=6)



def test_a_tied_int8_head_and_the_embedding_share_one_table(tiny_gguf, tiny_8da4w, tmp_path):
    """A tied model whose LM head stays int8 per-channel (8da4w's default, int8-dynamic): the embedding looks up
    the head's own codes and row scales, and the program keeps that table once, in its data file, where both
    the embedding kernel and XNNPACK's head read it. An int4 head or an untied model: one .pte, as before."""
    import executorch.kernels.quantized  # noqa: F401
    import torch
    from executorch.runtime import Runtime
    from tiny import write_tiny_gguf

    from edgerun.export.llm.export import tie_external_constants
    from edgerun.export.llm.gguf_model import load_llama
    from edgerun.export.llm.quantize import quantize_llama
    from edgerun.export.schemes import make_scheme

    model, _ = load_llama(tiny_gguf, max_context=16)
    example = (torch.tensor([[1, 2, 3]]), torch.arange(3))
    q, facts = quantize_llama(model, make_scheme("8da4w", embedding_bits=4))
    head = q.output.parametrizations.weight.original0            # the head's int8 codes, unwrapped
    assert q.tok_embeddings.bits == 8 and torch.equal(q.tok_embeddings.weight, head)
    assert facts["tied_table"] == "shared" and "embedding_bits=4 not used" in facts["embedding"]
    from edgerun.export.llm.quantize import _llm_weights
    from edgerun.export.recipes import RecipeContext
    warned: list[str] = []
    _llm_weights(make_scheme("8da4w", embedding_bits=4),
                 RecipeContext(module=model, example=example, target=None, flavour="llm", warn=warned.append))
    assert len(warned) == 1 and "embedding_bits=4 was not used" in warned[0]
    shared = tie_external_constants(torch.export.export(q, example))
    assert shared["table_bytes"] == head.numel() and len(shared["tables"]) == len(shared["twins"]) == 1
    _, own = quantize_llama(model, make_scheme("8da4w", int8_layers="none"))
    assert "tied_table" not in own and "stored apart" in own["lm_head"]
    untied, _ = load_llama(write_tiny_gguf(tmp_path / "untied.gguf", tied=False), max_context=16)
    q, facts = quantize_llama(untied, make_scheme("8da4w"))
    assert "tied_table" not in facts and tie_external_constants(torch.export.export(q, example)) is None

    m = read_manifest(tiny_8da4w)
    assert m.ok, m.verification.failures
    table = model.config.vocab_size * model.config.dim           # int8 codes, one byte each
    assert m.files["data"] == "model.ptd" and m.verified_data() is not None
    assert table <= m.data_bytes < 1.5 * table                    # once, not twice
    assert m.program_bytes == m.pte_bytes + m.data_bytes
    assert m.scheme.facts["tied_table_bytes"] == table
    assert any("embedding_byte" in k for k in m.operators.non_delegated)
    with pytest.raises(Exception):   # the program cannot run without its data file
        Runtime.get().load_program(str(m.pte_path)).load_method("forward")


def test_the_eager_quantized_embedding_looks_up_exactly_what_the_full_table_op_gives(tiny_gguf):
    """Eager runs (the export's reference) dequantize only the rows looked up; the values must be the op's."""
    import torch

    from edgerun.export.llm.gguf_model import load_llama
    from edgerun.export.llm.quantize import quantize_llama
    from edgerun.export.schemes import make_scheme

    model, _ = load_llama(tiny_gguf, max_context=16)
    tokens = torch.tensor([[5, 3, 5, model.config.vocab_size - 1, 0, 3]])
    for scheme in (make_scheme("8da4w", group_size=32, embedding_bits=8, int8_layers="none"),
                   make_scheme("8da4w", group_size=32, embedding_bits=4, int8_layers="none"),
                   make_scheme("8da4w", group_size=32)):   # the last: the head's shared table
        emb = quantize_llama(model, scheme)[0].tok_embeddings
        assert torch.equal(emb(tokens), emb.full_table_forward(tokens))
        assert emb(tokens).shape == (1, 6, model.config.dim)


def test_weight_bytes_leave_out_the_kv_cache_without_functionalizing_the_program(tiny_gguf):
    """The KV cache is found from the ops that write it in the captured graph, as the functionalized
    (decomposed) program's buffers_to_mutate would say -- without the retrace that costs."""
    import torch

    from edgerun.export.llm.export import _weight_bytes
    from edgerun.export.llm.gguf_model import load_llama
    from edgerun.export.llm.quantize import quantize_llama
    from edgerun.export.schemes import make_scheme

    model, _ = load_llama(tiny_gguf, max_context=16)
    for module in (model, quantize_llama(model, make_scheme("8da4w", group_size=32))[0]):
        t = torch.export.Dim("T", min=1, max=16)
        ep = torch.export.export(module, (torch.arange(4)[None], torch.arange(4)),
                                 dynamic_shapes={"tokens": {1: t}, "input_pos": {0: t}})
        fast, decomposed = _weight_bytes(ep), _weight_bytes(ep.run_decompositions({}))
        assert fast == decomposed and ep.run_decompositions({}).graph_signature.buffers_to_mutate


def test_lowering_progress_counts_partitions_and_puts_the_backend_classes_back():
    """The counting wrappers exist only while a lowering counts, nested or not, and call through."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    from edgerun.export.llm import export as llm_export

    before = (XnnpackBackend.__dict__["preprocess"], "preprocess_multimethod" in XnnpackBackend.__dict__)
    with llm_export._partition_progress():
        wrapped = XnnpackBackend.__dict__["preprocess"]
        assert wrapped is not before[0]
        with llm_export._partition_progress():
            assert XnnpackBackend.__dict__["preprocess"] is wrapped     # not wrapped twice
        assert XnnpackBackend.__dict__["preprocess"] is wrapped
    assert (XnnpackBackend.__dict__["preprocess"], "preprocess_multimethod" in XnnpackBackend.__dict__) == before


def test_attention_reads_only_the_caches_valid_prefix(tiny_gguf):
    """With cache_positions, a step's attention never touches the cache past its valid prefix: positions
    beyond it hold NaN here, which the whole-cache attention (masked, but still multiplied) carries into the
    logits and the prefix attention does not -- and on a clean cache both give the same logits."""
    import torch

    from edgerun.export.llm.gguf_model import load_llama

    model, _ = load_llama(tiny_gguf, max_context=16)
    prompt, pos = torch.tensor([[5, 3, 7, 1, 2]]), torch.arange(5)
    with torch.no_grad():
        model.reset_cache()
        full = model(prompt, pos)
        model.reset_cache()
        prefix = model(prompt, pos, torch.arange(5))
        assert torch.allclose(full, prefix, atol=1e-5, rtol=1e-5)
        step = (torch.tensor([[9]]), torch.tensor([5]))
        for layer in model.layers:  # poison what lies past the prefix the next step may see (0..5)
            layer.attention.k_cache[..., 6:] = float("nan")
            layer.attention.v_cache[..., 6:, :] = float("nan")
        assert torch.isfinite(model(*step, torch.arange(6))).all()
        model.layers[0].attention.k_cache[..., 6:] = float("nan")
        assert torch.isnan(model(*step)).any()


def test_an_llm_program_takes_the_valid_prefix_as_its_third_input(tiny_fp32, tiny_gguf):
    """The exported method's third input is cache_positions, dynamic up to the max context: a decode step
    with a short prefix gives the logits eager PyTorch gives over the whole cache."""
    import torch

    from edgerun.core.artifact import read_manifest
    from edgerun.export.llm.export import _runtime_method
    from edgerun.export.llm.gguf_model import load_llama

    m = read_manifest(tiny_fp32)
    assert [s.name for s in m.inputs] == ["tokens", "input_pos", "cache_positions"]
    assert m.inputs[2].shape == (m.llm.max_context,) and m.recipe.model["program_layout"] == 3
    method = _runtime_method(m.pte_path, m.data_path)
    assert method.metadata.num_inputs() == 3
    model = load_llama(tiny_gguf, max_context=m.llm.max_context)[0]
    prompt = torch.tensor([[4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        want = model(prompt, torch.arange(6))
        got = method.execute([prompt, torch.arange(6), torch.arange(6)])[0]
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
        want = model(torch.tensor([[7]]), torch.tensor([6]))
        got = method.execute([torch.tensor([[7]]), torch.tensor([6]), torch.arange(7)])[0]
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
