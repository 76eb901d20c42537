"""Recipes as registered handlers: recipe text, chains, a recipe a test defines and registers, targets
that name their quantizer and how they are measured — each refusal naming what exists."""

from __future__ import annotations

import dataclasses
import re

import pytest

from edgerun.core.errors import UsageError
from edgerun.export import (ESTIMATORS, QUANTIZERS, RECIPES, SCHEMES, TARGETS, Recipe, RecipeChain, RecipeResult,
                            Target, export_model, get_target, make_scheme, parse_recipe, read_manifest,
                            recipe_identity, register_estimator, register_quantizer, register_recipe,
                            register_target, unregister_recipe)
from edgerun.export.zoo import get_model


@dataclasses.dataclass(frozen=True)
class NoopPrune(Recipe):
    """A prune that zeroes nothing: weights below ``amount`` times zero are 'pruned'."""

    name = "noop-prune"
    kind = "prune"
    amount: float = 0.0
    structured: bool = False


CALLS: list[float] = []


def _noop_prune(recipe: NoopPrune, ctx) -> RecipeResult:
    import torch

    CALLS.append(recipe.amount)
    zeroed = 0
    with torch.no_grad():
        for p in ctx.module.parameters():
            mask = p.abs() < 0.0 * recipe.amount   # never true: nothing is zeroed
            zeroed += int(mask.sum())
            p.masked_fill_(mask, 0.0)
    return RecipeResult(ctx.module, facts={"zeroed": zeroed})


@pytest.fixture
def noop_prune():
    with register_recipe(NoopPrune, _noop_prune) as cls:
        yield cls
    assert "noop-prune" not in RECIPES


# ------------------------------------------------------------------------------------------- text
@pytest.mark.parametrize("text,spec", [
    ("int8", "int8"), ("fp32", "fp32"), ("8da4w", "8da4w"), ("int8-dynamic", "int8-dynamic"),
    ("8da4w:group_size=32", "8da4w"),                                   # a default option is not shown
    ("8da4w:group_size=64", "8da4w:group_size=64"),
    ("8da4w:group_size=64:embedding_bits=4", "8da4w:embedding_bits=4:group_size=64"),   # options sorted
    ("int8:per_channel=false", "int8:per_channel=false"),
    ("fp32+int8", "int8"),                                              # an fp32 step beside others does nothing
])
def test_recipe_text_round_trips_to_its_canonical_spec(text, spec):
    chain = parse_recipe(text)
    assert chain.spec == spec and parse_recipe(chain.spec) == chain
    assert chain.name == spec.split(":")[0] and chain.quantize.name == chain.name


def test_a_plain_scheme_keeps_its_name_and_hash():
    for name in SCHEMES:
        chain = parse_recipe(name)
        assert chain.spec == chain.name == name and chain.steps == (make_scheme(name),)
        assert chain.recipe_hash == make_scheme(name).recipe_hash   # cell keys and manifests stay as they were
    assert parse_recipe("8da4w:group_size=64").recipe_hash == make_scheme("8da4w", group_size=64).recipe_hash
    assert parse_recipe("8da4w:group_size=64").recipe_hash != parse_recipe("8da4w").recipe_hash


@pytest.mark.parametrize("text,words", [
    ("int9", ["unknown recipe 'int9'", "quantize: fp32", "int8", "8da4w"]),
    ("8da4w:gs=64", ["takes no option gs", "group_size", "embedding_bits"]),
    ("8da4w:group_size=abc", ["group_size", "is an integer, not 'abc'"]),
    ("8da4w:group_size=48", ["power of two"]),
    ("int8:per_channel=maybe", ["per_channel", "true or false"]),
    ("int8:calibration_samples", ["'calibration_samples' is not key=value"]),
    ("int8:per_channel=true:per_channel=false", ["gives option per_channel twice"]),
    ("fp32,int8", ["contains a comma", "'+'"]),
    ("int8+8da4w", ["2 quantize steps", "at most one"]),
    ("", ["an empty recipe"]),
])
def test_bad_recipe_text_is_a_usage_error_naming_it(text, words):
    with pytest.raises(UsageError) as info:
        parse_recipe(text)
    text_out = info.value.paragraph()
    assert all(w in text_out for w in words), text_out


def test_scheme_options_from_the_command_line_set_the_quantize_step():
    chain = parse_recipe("8da4w").with_options(group_size=64, embedding_bits=None)
    assert chain.spec == "8da4w:group_size=64"
    with pytest.raises(UsageError, match="scheme 'fp32' takes no option group_size"):
        parse_recipe("fp32").with_options(group_size=32)


# ---------------------------------------------------------------------------------- registration
def test_a_registered_recipe_parses_chains_and_is_gone_after(noop_prune):
    chain = parse_recipe("noop-prune:amount=0.5+int8")
    assert [s.kind for s in chain.steps] == ["prune", "quantize"] and chain.name == "noop-prune+int8"
    assert chain.spec == "noop-prune:amount=0.5+int8" and chain.quantize == make_scheme("int8")
    assert parse_recipe("noop-prune").spec == "noop-prune" and parse_recipe("noop-prune").quantize.name == "fp32"
    assert parse_recipe("noop-prune:structured=true").steps[0].structured is True
    # the hash covers every option of every step, the quantize step's too
    hashes = {parse_recipe(t).recipe_hash for t in ("noop-prune:amount=0.1", "noop-prune:amount=0.2",
                                                     "noop-prune:amount=0.1+int8",
                                                     "noop-prune:amount=0.1+int8:calibration_samples=8",
                                                     "noop-prune:amount=0.1:structured=true")}
    assert len(hashes) == 5
    with pytest.raises(UsageError, match="must come last"):
        parse_recipe("int8+noop-prune")
    with pytest.raises(UsageError) as info:
        parse_recipe("prune")
    assert re.search(r"prune: [^;]*noop-prune", info.value.paragraph())  # what exists, by kind


def test_unregister_removes_the_recipe():
    register_recipe(NoopPrune, _noop_prune)
    assert parse_recipe("noop-prune:amount=0.1").steps[0] == NoopPrune(0.1)
    unregister_recipe(NoopPrune)
    with pytest.raises(UsageError, match="unknown recipe 'noop-prune'"):
        parse_recipe("noop-prune")


def test_registration_refuses_what_is_not_a_recipe():
    @dataclasses.dataclass(frozen=True)
    class Taken(Recipe):
        name = "int8"
        kind = "prune"

    @dataclasses.dataclass(frozen=True)
    class Sep(Recipe):
        name = "a:b"
        kind = "prune"

    @dataclasses.dataclass(frozen=True)
    class Odd(Recipe):
        name = "odd"
        kind = "sparsify"

    @dataclasses.dataclass(frozen=True)
    class NotARecipe:
        name = "plain"
        kind = "prune"

    with pytest.raises(ValueError, match="'int8' is taken"):
        register_recipe(Taken)
    for cls, words in ((Sep, "separators"), (Odd, "not one of quantize"), (NotARecipe, "not a dataclass subclass")):
        with pytest.raises(TypeError, match=words):
            register_recipe(cls)
    assert RECIPES["int8"] is type(make_scheme("int8"))


def test_a_recipe_without_an_llm_handler_is_refused_for_an_llm(noop_prune):
    chain = parse_recipe("noop-prune:amount=0.1")
    chain.check_handlers("model")
    with pytest.raises(UsageError) as info:
        chain.check_handlers("llm")
    assert "'noop-prune' has no handler for an LLM" in info.value.paragraph() and "8da4w" in info.value.paragraph()
    with pytest.raises(UsageError, match="'int8' has no handler for an LLM"):
        parse_recipe("int8").check_handlers("llm")


# ------------------------------------------------------------------------------------- exports
@pytest.mark.slow
def test_a_custom_recipe_exports_two_option_values_as_two_recipes(noop_prune, tmp_path):
    CALLS.clear()
    stages: list[str] = []
    a = export_model("factories:tiny", "host", "noop-prune:amount=0.1", tmp_path / "a", on_stage=stages.append)
    b = export_model("factories:tiny", "host", parse_recipe("noop-prune:amount=0.2"), tmp_path / "b")
    assert CALLS == [0.1, 0.2] and a.ok and b.ok
    assert stages == ["resolve", "load model", "export", "prune", "lower", "write", "verify"]
    assert a.recipe_hash != b.recipe_hash and a.scheme.recipe_hash != b.scheme.recipe_hash
    for m, amount in ((read_manifest(tmp_path / "a"), 0.1), (read_manifest(tmp_path / "b"), 0.2)):
        assert m.scheme.recipe == m.scheme.spec == f"noop-prune:amount={amount}"
        assert m.scheme.name == "fp32"                                   # its quantize step, as in schema 1
        prune = m.scheme.steps[0]
        assert (prune.name, prune.kind, dict(prune.options)) == ("noop-prune", "prune",
                                                                  {"amount": amount, "structured": False})
        facts = dict(prune.facts)
        stats = facts.pop("layer_stats")               # the pipeline's count of parameters and FLOPs per layer type
        assert facts == {"zeroed": 0} and "prune" in m.stage_seconds
        assert stats["before"] == stats["after"] and stats["after"]["flops"] > 0   # a prune that zeroes nothing
        assert [dict(s) for s in m.recipe.steps] == [{"name": "noop-prune", "kind": "prune",
                                                      "options": {"amount": amount, "structured": False}}]
        assert m.verification.thresholds.min_snr_db == 40.0             # fp32's: the prune asks nothing looser
    # the identity computed before any work is the one the manifest records
    spec = get_model("factories:tiny")
    assert recipe_identity(spec, get_target("host"), "noop-prune:amount=0.1").hash == a.recipe_hash


@pytest.mark.slow
def test_a_chain_quantizes_after_the_prune_and_the_target_checks_the_quantize_step(noop_prune, tmp_path):
    CALLS.clear()
    m = export_model("factories:tiny", "rpi5", "noop-prune:amount=0.3+int8", tmp_path / "q")
    assert CALLS == [0.3] and m.ok and m.scheme.name == "int8" and m.scheme.recipe == "noop-prune:amount=0.3+int8"
    assert [s.kind for s in m.scheme.steps] == ["prune", "quantize"]
    assert m.scheme.facts["calibration_samples"] == 16 and m.scheme.steps[1].facts == m.scheme.facts
    assert m.calibration.samples == 16
    with pytest.raises(UsageError, match="does not allow scheme 'int8'"):
        export_model("factories:tiny", "portable", "noop-prune:amount=0.3+int8", tmp_path / "p")
    assert CALLS == [0.3]   # refused before any work


def test_a_target_may_forbid_a_recipe(noop_prune, tmp_path):
    host = get_target("host")
    strict = dataclasses.replace(host, name="host-no-prune", forbidden_recipes=("noop-prune",))
    with register_target(strict):
        with pytest.raises(UsageError) as info:
            export_model("factories:tiny", "host-no-prune", "noop-prune:amount=0.1", tmp_path / "x")
        assert "does not allow recipe 'noop-prune'" in info.value.paragraph()
    assert "host-no-prune" not in TARGETS and not (tmp_path / "x").exists()


def test_calibration_for_a_recipe_that_runs_none_is_refused(tmp_path):
    from edgerun.export import ExportOptions

    calib = tmp_path / "c.npy"
    calib.write_bytes(b"")
    for scheme in ("fp32", "8da4w"):
        with pytest.raises(UsageError) as info:
            export_model("factories:tiny", "host", scheme, tmp_path / scheme, options=ExportOptions(calibration=str(calib)))
        assert "runs no calibration inputs" in info.value.paragraph() and "int8" in info.value.paragraph()


# --------------------------------------------------------------------------------------- targets
def test_targets_name_their_quantizer_and_how_they_are_measured():
    for t in TARGETS.values():   # run on a device, or (the Ethos-U NPUs) estimated by a registered estimator
        assert t.measure == "run" or (t.measure == "estimate" and t.estimator in ESTIMATORS)
        assert (t.quantizer == "xnnpack") == ("xnnpack" in t.backends)
    assert get_target("ethos-u55-128").estimator == "vela" and get_target("rpi5").measure == "run"
    assert "xnnpack" in QUANTIZERS
    with pytest.raises(ValueError, match="unknown quantizer 'nope'"):
        dataclasses.replace(get_target("host"), name="x", quantizer="nope")
    with pytest.raises(ValueError, match="measure must be one of"):
        dataclasses.replace(get_target("host"), name="x", measure="guess")
    with pytest.raises(ValueError, match="needs a registered estimator"):
        dataclasses.replace(get_target("host"), name="x", measure="estimate", estimator="vela-test")


def test_a_target_measured_by_an_estimator():
    seen = []

    @register_estimator("cycles-test")
    def _cycles(manifest, *, clock_hz: float = 1e9):
        seen.append(manifest)
        return {"latency_s": 1000 / clock_hz, "source": "estimated"}

    try:
        npu = Target("npu-test", "an NPU whose compiler reports cycles", "armv8m", "cortex-m55", (), "fp32",
                     ("fp32",), measure="estimate", estimator="cycles-test")
        with register_target(npu):
            t = get_target("npu-test")
            assert t.measure == "estimate" and t.estimate("m", clock_hz=1e6) == {"latency_s": 1e-3,
                                                                                "source": "estimated"}
            assert seen == ["m"]
            with pytest.raises(UsageError, match="not estimated"):
                get_target("host").estimate("m")
        assert "npu-test" not in TARGETS
    finally:
        ESTIMATORS.pop("cycles-test", None)


@pytest.mark.slow
def test_int8_uses_the_quantizer_the_target_names(tmp_path):
    made = []

    @register_quantizer("counting-xnnpack")
    def _counting(scheme):
        made.append(scheme.name)
        return QUANTIZERS["xnnpack"](scheme)

    try:
        t = dataclasses.replace(get_target("host"), name="host-counting", quantizer="counting-xnnpack")
        with register_target(t):
            m = export_model("factories:tiny", "host-counting", "int8", tmp_path / "q")
        assert made == ["int8"] and m.ok and m.target.quantizer == "counting-xnnpack"
        assert m.scheme.facts["quantizer"] == "XNNPACKQuantizer"
        no_quantizer = dataclasses.replace(get_target("host"), name="host-none", quantizer=None)
        with register_target(no_quantizer):
            with pytest.raises(UsageError, match="names no quantizer"):
                export_model("factories:tiny", "host-none", "int8", tmp_path / "n")
    finally:
        QUANTIZERS.pop("counting-xnnpack", None)


def test_a_recipe_chain_value_is_accepted_wherever_text_is():
    assert RecipeChain.of(None, default="int8") == parse_recipe("int8")
    assert RecipeChain.of(make_scheme("8da4w", group_size=64)).spec == "8da4w:group_size=64"
    assert RecipeChain.of([make_scheme("fp32")]).spec == "fp32"
    assert RecipeChain(()).spec == "fp32"
