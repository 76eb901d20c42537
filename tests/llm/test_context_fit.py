"""A chat that fits (issue 26, item 4): with the old default max context of 128 a SmolLM2 chat turn
stopped at ~85 tokens with "stop: context" and no hint. The default is now a chat turn (512, or the
context the model was trained for when shorter), `generate` warns before a request that cannot fit,
with the re-export command, and `inspect` shows max context, KV-cache bytes, perplexity and the
tokenizer. On the tiny GGUF's fp32 artifact (max context 48) and the host runner."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from edgerun.core.artifact import read_manifest
from edgerun.export.llm.export import PROMPTS
from edgerun.export.llm.zoo import DEFAULT_MAX_CONTEXT, gguf_spec
from edgerun.llm import ArtifactTokenizer, GenerateSettings, context_warning, generate

pytestmark = pytest.mark.slow


def test_the_default_context_is_a_chat_turn_but_never_more_than_the_model_was_trained_for(tiny_gguf, smollm2_gguf):
    from edgerun.export.llm.gguf_model import read_gguf

    trained = read_gguf(tiny_gguf).config.context_length
    assert gguf_spec(str(tiny_gguf)).default_max_context() == min(DEFAULT_MAX_CONTEXT, trained)
    assert gguf_spec(str(smollm2_gguf)).default_max_context() == DEFAULT_MAX_CONTEXT  # trained for 8192


def test_a_request_that_fits_gets_no_warning(tiny_fp32):
    m = read_manifest(tiny_fp32)
    assert context_warning(m, 10, m.llm.max_context - 9) is None  # the last new token needs no position
    assert context_warning(m, 10, m.llm.max_context - 8) is not None


def test_generate_warns_before_a_request_that_cannot_fit(tiny_fp32):
    m = read_manifest(tiny_fp32)
    n_prompt = len(ArtifactTokenizer(m).encode(PROMPTS[0]))
    room = m.llm.max_context - n_prompt + 1
    events: list[tuple[str, str]] = []
    record, ids = generate(tiny_fp32, "local://", PROMPTS[0],
                           GenerateSettings(max_new_tokens=room + 10, ignore_stop=True, threads=1),
                           on_text=lambda t: events.append(("text", t)),
                           on_warning=lambda w: events.append(("warning", w)))
    assert len(ids) == n_prompt
    assert events[0][0] == "warning" and [k for k, _ in events].count("warning") == 1  # before any text
    warning = events[0][1]
    assert f"holds {m.llm.max_context} positions" in warning and f"at most {room} new tokens" in warning
    assert f"{m.llm.kv_cache_bytes:,} bytes" in warning
    # the command re-exports this model for this target and recipe with a context that fits the request
    cmd = shlex.split(warning[warning.index("edgerun export"):])
    need = n_prompt + room + 10 - 1
    fits = int(cmd[cmd.index("--max-context") + 1])
    assert fits >= need and cmd[2] == m.model.origin
    assert cmd[cmd.index("--target") + 1] == m.target.name and cmd[cmd.index("--scheme") + 1] == m.scheme.spec
    # the warning was right: the run stopped at the context, and the stored record keeps the warning
    assert record.llm.stop == "context" and len(record.llm.ids) == room
    assert warning in record.warnings


def test_generate_cli_prints_the_warning_and_json_carries_it(tiny_fp32, cli, tmp_path):
    m = read_manifest(tiny_fp32)
    res = cli("generate", str(tiny_fp32), "--prompt", PROMPTS[0], "-n", str(m.llm.max_context), "--threads", "1",
              "--store", str(tmp_path / "s.sqlite"), "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert len(d["warnings"]) == 1 and "--max-context" in d["warnings"][0]
    assert "warning:" in res.stderr and "re-export" in res.stderr


def test_inspect_shows_max_context_kv_cache_perplexity_and_tokenizer(tiny_fp32, cli):
    m = read_manifest(tiny_fp32)
    res = cli("inspect", str(tiny_fp32))
    assert res.returncode == 0, res.stderr
    text = " ".join(re.sub(r"[\u2500-\u257f]", " ", res.stdout).split())  # no box lines; rich wraps long cells
    assert f"max context {m.llm.max_context} positions" in text
    assert f"{m.llm.kv_cache_bytes:,} bytes" in text and f"{m.llm.kv_cache_bytes_per_token:,} bytes a position" in text
    ppl = m.llm.quality.perplexity
    assert f"program {ppl.program:.3f} vs eager fp32 {ppl.eager_fp32:.3f}" in text
    assert m.llm.tokenizer.kind in text and "tokenizer.json" in text
    assert "attention over the tokens in context each step" in text   # program layout 3: cache_positions

