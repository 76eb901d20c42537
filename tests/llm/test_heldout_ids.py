"""An LLM artifact carries the token ids its perplexity was measured on (heldout_ids.npy, named with its
sha256 in the manifest), and every later perplexity uses those ids — not the held-out text of whatever
edgerun is installed, re-tokenised. A changed ids file is refused; an artifact made before the ids were
stored falls back to the text."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from edgerun.core.artifact import MAX_HELDOUT_TOKENS, Perplexity, read_manifest
from edgerun.core.errors import ArtifactError
from edgerun.export.llm.export import DATA, HELDOUT_IDS, HELDOUT_TEXT
from edgerun.llm import ArtifactTokenizer, heldout_ids

pytestmark = pytest.mark.slow


def _copy(art, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(art, dst)
    return dst


def _edit_manifest(art, change) -> None:
    path = art / "manifest.json"
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def _store_ids(art, ids) -> None:
    """Replace the artifact's held-out ids the way an export would write them (file and manifest agree)."""
    np.save(art / HELDOUT_IDS, ids if isinstance(ids, np.ndarray) else np.asarray(ids, dtype=np.int32))
    sha = hashlib.sha256((art / HELDOUT_IDS).read_bytes()).hexdigest()

    def change(d):
        d["llm"]["quality"]["perplexity"].update(ids_sha256=sha, tokens=len(ids))
    _edit_manifest(art, change)


def test_the_export_stores_the_ids_it_measured_perplexity_on(tiny_fp32):
    m = read_manifest(tiny_fp32)
    ppl = m.llm.quality.perplexity
    assert isinstance(ppl, Perplexity) and ppl.text == HELDOUT_TEXT and ppl.ids_file == HELDOUT_IDS
    stored = np.load(tiny_fp32 / HELDOUT_IDS)
    assert stored.dtype == np.int32 and stored.shape == (ppl.tokens,)
    assert hashlib.sha256((tiny_fp32 / HELDOUT_IDS).read_bytes()).hexdigest() == ppl.ids_sha256
    tok = ArtifactTokenizer(m)
    assert stored.tolist() == tok.tok.encode((DATA / "heldout.txt").read_text()).ids
    ids, window = heldout_ids(m, tok)
    assert ids == stored.tolist() and window == ppl.window == m.llm.max_context - 1
    assert m.heldout_ids() == tuple(stored.tolist())


def test_the_stored_ids_are_used_not_the_installed_text(tiny_fp32, tmp_path):
    art = _copy(tiny_fp32, tmp_path)
    mine = np.load(art / HELDOUT_IDS)[:40][::-1].tolist()  # ids no tokenisation of the text gives
    _store_ids(art, mine)
    m = read_manifest(art)
    ids, _ = heldout_ids(m, ArtifactTokenizer(m))
    assert ids == mine


@pytest.mark.parametrize("tamper,words", [
    (lambda art: np.save(art / HELDOUT_IDS, np.load(art / HELDOUT_IDS)[::-1]), "do not match the sha256"),
    (lambda art: (art / HELDOUT_IDS).unlink(), "is missing"),
    (lambda art: _store_ids(art, [0, 1, 10 ** 6]), "outside the vocabulary"),
    (lambda art: _store_ids(art, np.zeros((2, 3), np.int32)), "is not 2 token ids"),
    (lambda art: _store_ids(art, np.zeros(3, np.float32)), "is not 3 token ids"),
    (lambda art: _edit_manifest(art, lambda d: d["llm"]["quality"]["perplexity"].update(ids_file="../x.npy")),
     "leaves the artifact"),
])
def test_changed_ids_are_refused(tiny_fp32, tmp_path, tamper, words):
    art = _copy(tiny_fp32, tmp_path)
    tamper(art)
    with pytest.raises(ArtifactError) as info:
        m = read_manifest(art)
        heldout_ids(m, ArtifactTokenizer(m))
    assert words in info.value.message


def test_an_oversized_ids_file_is_refused_before_it_is_read(tiny_fp32, tmp_path):
    art = _copy(tiny_fp32, tmp_path)
    with open(art / HELDOUT_IDS, "ab") as f:
        f.truncate(MAX_HELDOUT_TOKENS * 8 + 8192)
    with pytest.raises(ArtifactError, match="more than 1,048,576 token ids"):
        read_manifest(art).heldout_ids()


def test_an_artifact_made_before_the_ids_were_stored_falls_back_to_the_text(tiny_fp32, tmp_path):
    art = _copy(tiny_fp32, tmp_path)
    (art / HELDOUT_IDS).unlink()

    def old(d):
        d["schema_version"] = 1
        for key in ("ids_file", "ids_sha256"):
            d["llm"]["quality"]["perplexity"].pop(key)
    _edit_manifest(art, old)
    m = read_manifest(art)
    assert m.schema_version == 1 and m.heldout_ids() is None
    ids, window = heldout_ids(m, ArtifactTokenizer(m))
    assert ids == np.load(tiny_fp32 / HELDOUT_IDS).tolist() and window == m.llm.quality.perplexity.window


def test_a_score_run_on_the_device_measures_the_stored_ids(tiny_fp32, tmp_path, runner_bundle):
    from edgerun.devices.inventory import resolve_device
    from edgerun.llm import perplexity_on_device

    runner_bundle("host")
    art = _copy(tiny_fp32, tmp_path)
    mine = np.load(art / HELDOUT_IDS)[:30].tolist()
    _store_ids(art, mine)
    with resolve_device("local://", None) as dev:
        rec = perplexity_on_device(art, dev, threads=1, store_path=tmp_path / "s.sqlite")
    # the 30 stored ids were scored, not the installed text re-tokenised (which gives many more)
    assert rec.llm.perplexity_tokens == len(mine) - 1 < read_manifest(tiny_fp32).llm.quality.perplexity.tokens - 1
    assert rec.llm.perplexity != pytest.approx(read_manifest(tiny_fp32).llm.quality.perplexity.program, rel=1e-6)
