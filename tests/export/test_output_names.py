"""A model whose outputs are a dict (or a named tuple) keeps their names: in the manifest, in the export's
verification, in `inspect`, and in the record of a run on a device -- not output_0..N."""

from __future__ import annotations

import collections
import json

import pytest
import torch

from edgerun.export.pipeline import output_names

Pair = collections.namedtuple("Pair", "logits embedding")


class Detector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(16, 32)
        self.cls = torch.nn.Linear(32, 5)
        self.box = torch.nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"scores": self.cls(h), "boxes": self.box(h), "embedding": h}


def test_names_follow_the_output_structure():
    t = torch.zeros(1)
    assert output_names(t) == ["output_0"]
    assert output_names((t, [t, t])) == ["output_0", "output_1", "output_2"]
    assert output_names({"scores": t, "boxes": (t, t)}) == ["scores", "boxes.0", "boxes.1"]
    assert output_names(Pair(t, t)) == ["logits", "embedding"]
    # hostile or clashing keys stay plain, bounded and unique
    assert output_names({"a b\x1b[2J": t, "a_b": t, "x" * 100: t}) == ["a_b_2J", "a_b", "x" * 64]
    assert output_names({"a/b": t, "a?b": t}) == ["a_b", "a_b_1"]


def test_a_dict_output_keeps_its_keys_through_export_inspect_and_a_run(tmp_path, cli, runner_bundle):
    from edgerun.core.artifact import read_manifest
    from edgerun.export import export_model
    from edgerun.profiling import ProfileSettings, profile

    torch.manual_seed(0)
    art = tmp_path / "det"
    export_model((Detector().eval(), (torch.randn(2, 16),)), "host", "fp32", art, name="detector")
    m = read_manifest(art)
    assert m.ok and [o.name for o in m.outputs] == ["scores", "boxes", "embedding"]
    assert [o.name for o in m.verification.outputs] == ["scores", "boxes", "embedding"]
    shown = cli("inspect", str(art))
    assert shown.returncode == 0 and all(k in shown.stdout for k in ("scores", "boxes", "embedding"))
    assert "output_0" not in shown.stdout
    runner_bundle("host")
    [record] = profile(art, ["local://"], ProfileSettings(iterations=2, warmup=0, threads=(1,), etdump=False),
                       store_path=tmp_path / "r.sqlite")
    assert [o.name for o in record.accuracy.outputs] == ["scores", "boxes", "embedding"]
    assert json.loads(json.dumps(record.to_dict()))["accuracy"]["outputs"][0]["name"] == "scores"
