"""A recipe registered from outside edgerun is a sweep axis with its options: bench exports and runs each
option value as its own cell (its own key, artifact and recipe hash), on ``local://`` with the real
runner, and a resumed sweep finds both cells in the store."""

from __future__ import annotations

import dataclasses
import re
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


@dataclasses.dataclass(frozen=True)
class MagnitudePrune(Recipe):
    """README's example recipe, by its name and option (its handler here zeroes nothing)."""

    name = "magnitude-prune"
    kind = "prune"
    amount: float = 0.5


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


# A recipe text with options or steps: name:key=value[:key=value...] and/or step+step.
RECIPE_TEXT = re.compile(r"[a-z0-9][\w-]*(?::\w+=[\w.]+)+(?:\+[a-z0-9][\w-]*(?::\w+=[\w.]+)*)*"
                         r"|[a-z0-9][\w-]*(?:\+[a-z0-9][\w-]*(?::\w+=[\w.]+)*)+")


def _recipe_examples(text: str) -> list[str]:
    """The recipe texts in ``text``, less the syntax's own placeholder (``name:key=value``)."""
    return [m.group(0) for m in RECIPE_TEXT.finditer(text) if "key=value" not in m.group(0)]


def test_the_recipes_help_and_readme_offer_are_recipes_edgerun_has():
    """``bench --help`` offered ``prune:amount=0.5+int8`` while no prune recipe ships: copied, it was
    refused as an unknown recipe. Every recipe text the options' help and README's Recipes paragraph show
    parses with only edgerun's own recipes registered (one of your own is shown registered first)."""
    import typer.main

    from edgerun.cli import app
    from edgerun.export.recipes import parse_recipe

    command = typer.main.get_command(app)
    helps = [p.help or "" for c in command.commands.values() for p in c.params if "scheme" in p.name]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    recipes = readme[readme.index("**Recipes.**"):]
    recipes = recipes[:recipes.index("```")]  # the paragraph, up to its example of a recipe of your own
    shown = [x for text in helps + [recipes] for x in _recipe_examples(text)]
    assert len(shown) >= 3 and "8da4w:group_size=64" in shown, shown  # the pattern finds what is there
    refused = {}
    with register_recipe(MagnitudePrune, _identity_prune):  # README's own recipe, registered as it shows
        for text in shown:
            try:
                parse_recipe(text)
            except UsageError as e:  # an unknown recipe or option
                refused[text] = e.message
    assert not refused, refused
