"""Schemes and targets: typed configs, stable recipe hashes, refusals that list the legal choices."""

import pytest

from edgerun.core.errors import UsageError
from edgerun.export import SCHEMES, TARGETS, get_target, legal_pairs, make_scheme


def test_recipe_hash_is_stable_and_depends_on_options():
    a, b = make_scheme("int8"), make_scheme("int8")
    assert a.recipe_hash == b.recipe_hash
    assert make_scheme("int8", calibration_samples=32).recipe_hash != a.recipe_hash
    assert make_scheme("8da4w", group_size=64).recipe_hash != make_scheme("8da4w").recipe_hash
    assert len({make_scheme(n).recipe_hash for n in SCHEMES}) == len(SCHEMES)


def test_scheme_serialises_its_options():
    js = make_scheme("8da4w", group_size=128).to_json()
    assert js["name"] == "8da4w" and js["options"] == {"group_size": 128, "embedding_bits": 8} and js["recipe_hash"]


@pytest.mark.parametrize("name,opts,fragment", [
    ("int9", {}, "unknown scheme 'int9'"),
    ("fp32", {"group_size": 32}, "takes no option group_size"),
    ("8da4w", {"group_size": 48}, "power of two"),
    ("int8", {"calibration_samples": 0}, "positive integer"),
])
def test_bad_scheme_is_a_usage_error(name, opts, fragment):
    with pytest.raises(UsageError) as info:
        make_scheme(name, **opts)
    assert fragment in info.value.paragraph()


def test_illegal_target_scheme_pair_lists_the_legal_ones():
    with pytest.raises(UsageError) as info:
        get_target("portable").check_scheme("int8")
    text = info.value.paragraph()
    assert "does not allow scheme 'int8'" in text and "fp32" in text


def test_unknown_target_lists_known_targets():
    with pytest.raises(UsageError) as info:
        get_target("rpi9")
    assert "rpi5" in info.value.paragraph()


def test_targets_declare_what_later_steps_need():
    for t in TARGETS.values():
        assert t.default_scheme in t.allowed_schemes
        if t.arch == "aarch64":
            assert t.qemu_cpu and t.qemu_cpu != "max"  # qemu's max CPU breaks XNNPACK int8 kernels
    assert get_target("rpi5").qemu_cpu == "cortex-a76" and get_target("rpi4").qemu_cpu == "cortex-a72"
    assert ("portable", "fp32") in legal_pairs() and ("portable", "int8") not in legal_pairs()
