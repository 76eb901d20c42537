"""``profile``/``bench`` say when int8 is no faster than fp32 for the same model on a device."""

from __future__ import annotations

from edgerun.profiling import fp32_companions, scheme_speed_warnings
from edgerun.store import Store

from .conftest import HOST_INFO, analyse_lines, manifest, runner_lines

MS = 1_000_000
NO_VNNI = {**HOST_INFO, "cpu_features": ["avx2", "fma"]}
VNNI = {**HOST_INFO, "cpu_features": ["avx2", "fma", "avx512_vnni"]}


def _record(run_id, scheme, median_ms, info=NO_VNNI, threads=1, name="tinynet"):
    return analyse_lines(runner_lines([int(median_ms * MS) + i for i in range(20)], threads=threads),
                         manifest(name=name, scheme=scheme), info, run_id=run_id)


def test_int8_no_faster_than_fp32_is_named_with_the_cpu_reason():
    fp32, int8 = _record("r-f", "fp32", 5.0), _record("r-q", "int8", 5.6)
    [w] = scheme_speed_warnings([fp32, int8])
    assert "tinynet int8" in w and "5.600 ms" in w and "5.000 ms" in w and "r-f" in w
    assert "no int8 dot-product instruction" in w and "size, not for speed" in w
    [w2] = scheme_speed_warnings([_record("r-f", "fp32", 5.0, VNNI), _record("r-q", "int8", 5.6, VNNI)])
    assert "although its CPU has an int8 dot-product instruction" in w2


def test_no_warning_when_int8_is_faster_or_runs_are_not_comparable():
    assert scheme_speed_warnings([_record("r-f", "fp32", 5.0), _record("r-q", "int8", 3.0)]) == []
    # another thread count, another model: nothing to compare against
    assert scheme_speed_warnings([_record("r-f", "fp32", 5.0, threads=2), _record("r-q", "int8", 9.0)]) == []
    assert scheme_speed_warnings([_record("r-f", "fp32", 5.0, name="other"), _record("r-q", "int8", 9.0)]) == []


def test_profile_finds_the_stored_fp32_run_of_the_same_cell(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        s.save(_record("r-old", "fp32", 4.0))
        s.save(_record("r-other-threads", "fp32", 1.0, threads=2))
        s.save(_record("r-fp32", "fp32", 5.0))
        int8 = _record("r-q", "int8-dynamic", 6.0)
        companions = fp32_companions(s, [int8])
    assert [c.run_id for c in companions] == ["r-fp32"]
    [w] = scheme_speed_warnings([*companions, int8])
    assert "int8-dynamic" in w and "r-fp32" in w


def test_auto_thread_runs_compare_with_each_other_whatever_pool_each_chose():
    import dataclasses

    def auto(rec, chosen):
        trial = {"chosen": chosen, "trials": [{"threads": 2, "median_ns": 1}, {"threads": 1, "median_ns": 1}]}
        return dataclasses.replace(rec, provenance=dataclasses.replace(rec.provenance, threads=chosen,
                                                                       threads_auto=trial))

    fp32 = auto(_record("r-f", "fp32", 5.0, threads=2), 2)
    int8 = auto(_record("r-q", "int8", 6.0, threads=1), 1)
    [w] = scheme_speed_warnings([fp32, int8])
    assert "chosen by --threads auto" in w
    # an auto run is not compared with a fixed-pool run
    assert scheme_speed_warnings([_record("r-f", "fp32", 5.0, threads=1), int8]) == []


def test_the_library_profile_warns_like_the_cli(tmp_path, monkeypatch, caplog):
    """profile() from Python tells what the CLI prints: through the edgerun.profile logger by default,
    or to on_warning. The device run is replaced (the warning's logic is what is tested here; the
    real runs are in tests/test_profile_cli.py)."""
    import logging
    import types

    import edgerun.profiling as P
    import edgerun.runtime.deploy as D

    store = tmp_path / "r.sqlite"
    with Store(store) as s:
        s.save(_record("r-fp32", "fp32", 5.0))
    int8 = _record("r-q", "int8", 6.0)
    art = types.SimpleNamespace(path=tmp_path / "art", llm=None, dataset=None, verified_pte=lambda: None,
                                verified_data=lambda: None, target=types.SimpleNamespace(name="host"))
    monkeypatch.setattr(P, "_open_manifest", lambda a: art)
    monkeypatch.setattr(D, "check_run_request", lambda *a, **k: None)
    monkeypatch.setattr(P, "for_each_device", lambda *a, **k: [int8])
    with caplog.at_level(logging.WARNING, logger="edgerun.profile"):
        assert P.profile("art", ["local://"], P.ProfileSettings(), store_path=store) == [int8]
    [w] = [r.getMessage() for r in caplog.records if r.name == "edgerun.profile"]
    assert "tinynet int8" in w and "r-fp32" in w
    caplog.clear()
    seen: list[str] = []
    P.profile("art", ["local://"], P.ProfileSettings(), store_path=store, on_warning=seen.append)
    assert seen == [w] and not [r for r in caplog.records if r.name == "edgerun.profile"]
