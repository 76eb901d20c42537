"""The manifest is untrusted input (issue 20): every file it names that a command reads as part of the
model comes with a hash or the manifest is refused (an LLM's tokenizer without ``llm.tokenizer.sha256``
was read unchecked), and its declared inputs/outputs must agree with the program's own method (read
from the .pte's flatbuffer): a contradicting manifest was accepted, shown by `inspect`, and used to
build the program's inputs."""

from __future__ import annotations

import json
import shutil

import pytest

from edgerun.core.artifact import (Manifest, LLMFacts, read_manifest, read_program_signature,
                                   signature_mismatches)
from edgerun.core.errors import ArtifactError


@pytest.fixture
def artifact(make_artifact, tmp_path):
    src = make_artifact("digits_cnn", "host", "fp32")
    dst = tmp_path / "art"
    shutil.copytree(src, dst)
    return dst


def _edit(art, change):
    path = art / "manifest.json"
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def test_the_signature_is_read_from_the_program_itself(artifact):
    m = read_manifest(artifact)
    sig = read_program_signature(m.pte_path)
    assert sig.inputs == (("float32", (1, 1, 8, 8)),) and sig.outputs == (("float32", (1, 10)),)
    assert signature_mismatches(m, sig) == [] and m.verified_pte() == m.pte_path


CONTRADICTIONS = {
    "input shape": (lambda d: d["inputs"][0].update(shape=[1, 1, 16, 16]), "declared [1, 1, 16, 16]"),
    "input dtype": (lambda d: d["inputs"][0].update(dtype="int64"), "declared int64, the program takes float32"),
    "input count": (lambda d: d["inputs"].append({"name": "y", "shape": [1], "dtype": "float32"}),
                    "2 inputs declared"),
    "output shape": (lambda d: d["outputs"][0].update(shape=[1, 1000]), "outputs[0]"),
    "output dtype": (lambda d: d["outputs"][0].update(dtype="float16"), "declared float16"),
}


@pytest.mark.parametrize("case", sorted(CONTRADICTIONS))
def test_a_manifest_that_contradicts_its_program_is_refused_when_verified_and_by_inspect(artifact, case, cli):
    change, words = CONTRADICTIONS[case]
    _edit(artifact, change)
    m = read_manifest(artifact)                  # the JSON itself is well formed ...
    with pytest.raises(ArtifactError) as ei:     # ... but it is not what the program is
        m.verified_pte()
    assert words in ei.value.message and "contradicts the program" in ei.value.message
    assert ei.value.exit_code == 9
    r = cli("inspect", str(artifact), "--json")
    assert r.returncode == 9, (r.stdout, r.stderr[-1500:])
    err = json.loads(r.stdout)["error"]
    assert err["type"] == "ArtifactError" and words in err["message"]


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 64, b"\x10\x00\x00\x00ET12" + b"\xff" * 32,
                                     b"\x08\x00\x00\x00ET12\x00\x00\x00\x00"])
def test_a_program_that_is_not_a_flatbuffer_is_a_clear_error(tmp_path, garbage):
    p = tmp_path / "model.pte"
    p.write_bytes(garbage)
    with pytest.raises(ArtifactError) as ei:
        read_program_signature(p)
    assert str(p) in ei.value.message


def _llm_manifest(base: dict, tokenizer: dict) -> dict:
    d = json.loads(json.dumps(base))
    d["llm"] = {"architecture": "llama", "name": "tiny", **{k: 1 for k in LLMFacts._INTS}, "tokenizer": tokenizer}
    d["files"]["tokenizer"] = tokenizer.get("file") or "tokenizer.json"
    return d


@pytest.mark.parametrize("tokenizer", [{"file": "tokenizer.json"}, {"file": "tokenizer.json", "sha256": None},
                                       {"file": "tokenizer.json", "sha256": "abc"},
                                       {"file": "tokenizer.json", "sha256": "G" * 64}])
def test_a_tokenizer_without_a_valid_sha256_is_refused(artifact, tokenizer):
    base = json.loads((artifact / "manifest.json").read_text())
    with pytest.raises(ArtifactError) as ei:
        Manifest.from_json(_llm_manifest(base, tokenizer))
    assert "llm.tokenizer" in ei.value.message and "sha256" in ei.value.message


def test_a_tokenizer_with_its_sha256_reads(artifact):
    base = json.loads((artifact / "manifest.json").read_text())
    m = Manifest.from_json(_llm_manifest(base, {"file": "tokenizer.json", "sha256": "a" * 64}))
    assert m.llm.tokenizer.sha256 == "a" * 64
