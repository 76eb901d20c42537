"""The library takes what a Python user has: an nn.Module defined here with its example inputs, a
(module, example_inputs) pair, an ExportedProgram — and the recipe identity follows the module's code
and weights, so changing a weight changes the recipe hash."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgerun.core.errors import UsageError
from edgerun.export import ExportOptions, export_model, get_target, read_manifest, recipe_identity
from edgerun.export.modules import from_module, resolve_model


class Scaler(nn.Module):
    """A model defined in the calling script (not importable as a factory)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return torch.tanh(self.drop(self.fc(x)))


def _model(seed: int = 0) -> Scaler:
    torch.manual_seed(seed)
    return Scaler().eval()


EXAMPLE = (torch.randn(2, 6),)


def _hash(module, example=EXAMPLE) -> str:
    return recipe_identity(resolve_model(module, example), get_target("host"), "fp32").hash


def test_the_recipe_hash_follows_the_weights_and_the_code():
    m = _model()
    before = _hash(m)
    assert _hash(_model()) == before                     # the same code and weights: the same recipe
    with torch.no_grad():
        m.fc.weight[0, 0] += 1e-3
    assert _hash(m) != before                            # one weight changed
    assert _hash(_model(), (torch.randn(4, 6),)) != before   # other example shapes: another program

    class Scaler2(Scaler):                               # the same weights under other code
        def forward(self, x):
            return torch.sigmoid(self.fc(x))

    other = Scaler2().eval()
    other.load_state_dict(_model().state_dict())
    assert _hash(other) != before
    spec = from_module(_model(), EXAMPLE)
    assert spec.source == "python" and spec.origin.endswith("Scaler") and spec.name == "Scaler"
    assert spec.identity["classes"] == sorted(spec.identity["classes"]) and len(spec.identity["state_sha256"]) == 64


@pytest.mark.slow
def test_export_a_module_defined_here(tmp_path):
    m = _model()
    stages: list[str] = []
    manifest = export_model(m, "host", "fp32", tmp_path / "a", example_inputs=EXAMPLE, on_stage=stages.append)
    assert manifest.ok and manifest.model.name == "Scaler" and manifest.model.source == "python"
    assert stages[:3] == ["resolve", "load model", "export"] and stages[-1] == "verify"
    again = read_manifest(tmp_path / "a")
    assert again.recipe_hash == manifest.recipe_hash == _hash(m)
    assert again.recipe.model["state_sha256"] and again.inputs[0].shape == (2, 6)
    # the pair form and an ExportedProgram export the same program
    pair = export_model((m, EXAMPLE), "host", "fp32", tmp_path / "b")
    assert pair.ok and pair.model.name == "Scaler" and pair.recipe_hash == manifest.recipe_hash
    assert pair.pte_sha256 == manifest.pte_sha256
    ep = torch.export.export(m, EXAMPLE)
    from_ep = export_model(ep, "host", "int8-dynamic", tmp_path / "c", name="scaler_ep")
    assert from_ep.ok and from_ep.model.source == "exported" and from_ep.model.name == "scaler_ep"
    assert from_ep.scheme.name == "int8-dynamic" and from_ep.recipe.model["state_sha256"]
    # a weight changed: another recipe hash, also in the artifact
    with torch.no_grad():
        m.fc.bias[0] += 0.5
    changed = export_model(m, "host", "fp32", tmp_path / "d", example_inputs=EXAMPLE)
    assert changed.ok and changed.recipe_hash != manifest.recipe_hash


@pytest.mark.slow
def test_a_module_in_training_mode_is_exported_as_an_eval_copy_with_a_warning(tmp_path):
    m = _model().train()
    warnings: list[str] = []
    manifest = export_model(m, "host", "fp32", tmp_path / "t", example_inputs=EXAMPLE, on_warning=warnings.append,
                            options=ExportOptions(vectors=2))
    assert manifest.ok and m.training                                # the caller's module is untouched
    assert any("training mode" in w for w in warnings) and any("training mode" in w for w in manifest.warnings)


@pytest.mark.parametrize("call,words", [
    (lambda: export_model(_model(), "host", "fp32"), "needs example inputs"),
    (lambda: export_model((_model(), EXAMPLE), "host", "fp32", example_inputs=EXAMPLE), "example inputs once"),
    (lambda: export_model(_model(), "host", "fp32", example_inputs=[1, 2]), "must be a tensor or a non-empty tuple"),
    (lambda: export_model("factories:tiny", "host", "fp32", example_inputs=EXAMPLE), "brings its own"),
    (lambda: export_model(42, "host", "fp32"), "cannot export a int: the model must be"),
    (lambda: export_model(_model(), "host", "fp32", example_inputs=EXAMPLE, max_context=8), "LLMs only; 'Scaler'"),
])
def test_what_cannot_be_exported_is_a_usage_error(call, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as info:
        call()
    assert words in info.value.paragraph()
    assert not (tmp_path / "artifacts").exists()
