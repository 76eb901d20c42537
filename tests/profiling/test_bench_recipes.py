"""A recipe registered from outside edgerun is a sweep axis with its options: bench exports and runs each
option value as its own cell (its own key, artifact and recipe hash), on ``local://`` with the real
runner, and a resumed sweep finds both cells in the store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgerun.core.errors import UsageError
from edgerun.export import Recipe, RecipeResult, register_recipe
from edgerun.profiling import ProfileSettings, bench
from edgerun.store import Store

FACTORIES = Path(__file__).resolve().parents[1] / "export"


@dataclasses.dataclass(frozen=True)
class IdentityPrune(Recipe):
    """A prune of this test only: it zeroes nothing, whatever its ``amount``."""

    name = "identity-prune"
    kind = "prune"
    amount: float = 0.0


def _identity_prune(recipe: IdentityPrune, ctx) -> RecipeResult:
    return RecipeResult(ctx.module, facts={"zeroed": 0, "amount": recipe.amount})


def test_bench_sweeps_two_option_values_of_a_registered_recipe_as_two_cells(runner_bundle, tmp_path, monkeypatch):
    runner_bundle("host")
    monkeypatch.syspath_prepend(str(FACTORIES))
    settings = ProfileSettings(warmup=0, iterations=2, etdump=False, task_accuracy=False, threads=(1,))
    recipes = ["identity-prune:amount=0.25", "identity-prune:amount=0.5"]
    device = f"local://?work_dir={tmp_path / 'dev'}"
    with register_recipe(IdentityPrune, _identity_prune), Store(tmp_path / "s.sqlite") as store:
        first = bench("factories:tiny", ["host"], recipes, [device], settings, store=store)
        assert not first["failures"], first["failures"]
        assert first["cells"] == 2 and len(first["run_ids"]) == 2
        records = [store.get(r) for r in first["run_ids"]]
        again = bench("factories:tiny", ["host"], recipes, [device], settings, store=store)
    assert again["sweep_id"] == first["sweep_id"] and again["run_ids"] == first["run_ids"]  # resumed: nothing re-run
    keys = [r.cell for r in records]
    assert keys == [f"factories:tiny/host/{s}/{device}/t1" for s in recipes]
    assert [r.model.scheme for r in records] == recipes
    assert records[0].model.recipe_hash != records[1].model.recipe_hash
    assert records[0].model.artifact != records[1].model.artifact
    with Store(tmp_path / "t.sqlite") as other, pytest.raises(UsageError, match="identity-prune"):
        bench("factories:tiny", ["host"], recipes[:1], [device], settings, store=other)  # unregistered: unknown
