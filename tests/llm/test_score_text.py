"""Scoring your own text on the device (issue 26, item 3): `profile --text FILE` measures the program's
perplexity on a person's text on the device and stores it (the file's name and sha256 in the record,
no eager figure from another text), on the tiny GGUF's fp32 artifact and the host runner; the figure is
eager PyTorch's on the same ids and windows, to float32 rounding. A file that cannot be scored is refused
before any device is touched."""

from __future__ import annotations

import hashlib
import json

import pytest

from edgerun.core.artifact import read_manifest
from edgerun.report import not_comparable, run_kind
from edgerun.store import Store

pytestmark = pytest.mark.slow

TEXT = ("Check the pressure relief valve before every start. If the gauge reads above 6 bar, close the inlet,\n"
        "open the bleed screw half a turn and wait until the needle settles. Never run the pump dry.\n")


def _eager_perplexity(gguf, manifest, ids, window):
    from edgerun.export.llm.export import perplexity
    from edgerun.export.llm.gguf_model import load_llama

    import torch

    model, _ = load_llama(gguf, max_context=manifest.llm.max_context)

    def run(tokens, pos):
        with torch.no_grad():
            return model(tokens, pos)

    return perplexity(run, ids, window)


def test_profile_text_scores_the_file_on_the_device_and_stores_it(tiny_fp32, tiny_gguf, tmp_path, cli):
    from edgerun.llm import ArtifactTokenizer, heldout_ids

    text = tmp_path / "manual.txt"
    text.write_text(TEXT, encoding="utf-8")
    store = tmp_path / "s.sqlite"
    res = cli("profile", str(tiny_fp32), "--text", str(text), "--iterations", "2", "--warmup", "0",
              "--threads", "1", "--store", str(store), "--json")
    assert res.returncode == 0, res.stderr
    runs = json.loads(res.stdout)["runs"]
    score = next(r for r in runs if r["llm"] and r["llm"]["test"] == "score")
    llm = score["llm"]
    assert llm["request"]["text"] == "manual.txt"
    assert llm["request"]["text_sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert llm["eager_perplexity"] is None  # the export's eager figure is of its own text, not this one

    m = read_manifest(tiny_fp32)
    tok = ArtifactTokenizer(m)
    ids = tok.encode(TEXT)
    _, window = heldout_ids(m, tok)
    assert llm["perplexity_tokens"] == len(ids) - 1 and llm["perplexity_window"] == window
    eager = _eager_perplexity(tiny_gguf, m, ids, window)
    assert llm["perplexity"] == pytest.approx(eager, rel=1e-3)

    with Store(store) as s:
        stored = s.get(score["run_id"])
    assert stored.llm.perplexity == llm["perplexity"] and stored.llm.request["text_sha256"] == \
        llm["request"]["text_sha256"]
    # a score of this text is another test than a score of the held-out text: never compared as one
    assert "manual.txt" in run_kind(stored).label
    assert run_kind(stored).test == "score"


@pytest.mark.parametrize("content,words", [
    (b"\xff\xfe not utf-8", "is not UTF-8 text: byte 0"),
    (b"", "scoring needs at least 2"),
])
def test_a_text_that_cannot_be_scored_is_refused_before_the_device(tiny_fp32, tmp_path, cli, content, words):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    res = cli("profile", str(tiny_fp32), "--text", str(bad), "--device", "ssh://nobody@192.0.2.1",
              "--store", str(tmp_path / "s.sqlite"), "--json")
    assert res.returncode == 2, res.stdout + res.stderr
    err = json.loads(res.stdout)["error"]
    assert str(bad) in err["message"] and words in err["message"]
