"""estimate:// devices (issue 24 item 3): an estimator standing in for a device in `profile` and `bench`,
making the record `edgerun estimate` makes; a bench cell whose target is not the estimate device's is
skipped with the reason; the report keeps the estimated runs apart. The export needs the Arm toolchain
environment (the ``arm_toolchain`` fixture of test_arm.py)."""

from __future__ import annotations

import json

import pytest

from edgerun.core.errors import DeviceError, EdgerunError




# ------------------------------------------------------------------------------------ no toolchain needed
def test_an_estimate_uri_names_an_estimated_target_and_its_board():
    from edgerun.devices import get_spec, make_device

    spec = get_spec("estimate://ethos-u55-128?clock=250e6&sram=512KiB&flash=2MiB")
    assert spec.transport == "estimate" and spec.target == "ethos-u55-128" and spec.name == "estimate://ethos-u55-128"
    assert spec.board() == {"clock_hz": 250e6, "sram": 512 * 1024, "flash": 2 * 1024 * 1024}
    with pytest.raises(DeviceError, match="runs nothing"):   # never deployed to, run on or probed
        make_device(spec)


@pytest.mark.parametrize("uri, words", [
    ("estimate://cortex-m55?clock=500e6", "no cycle model"),   # a Cortex-M: memory and fit, no clock, no time
    ("estimate://host", "run on a device"),
    ("estimate://ethos-u99", "not a target"),
    ("estimate://", "names the target"),
    ("estimate://ethos-u55-128?clock=5", "not an NPU clock"),
    ("estimate://ethos-u55-128?sram=lots", "not a memory size"),
    ("estimate://ethos-u55-128?system_config=x", "unknown option"),
    ("estimate://ethos-u55-128?target=ethos-u85-256", "give one"),
])
def test_a_wrong_estimate_uri_is_refused_before_any_work(uri, words):
    from edgerun.devices import get_spec
    from edgerun.estimate import check_estimate_spec

    with pytest.raises(EdgerunError) as e:   # the URI's form by the devices layer, its target by the hall
        check_estimate_spec(get_spec(uri))
    assert e.value.exit_code == 2 and words in e.value.message


def test_bench_skips_ethos_u_and_cortex_m_cells_on_devices_that_run_bundles_before_any_export(tmp_path):
    """An Ethos-U or Cortex-M program cannot run on local:// or qemu-aarch64:// (no bundle holds its kernels):
    its cells are skipped with the reason, like an estimate device's other targets, not failed after an export."""
    from edgerun.profiling import ProfileSettings, bench
    from edgerun.store import Store

    cells: list[tuple[str, str]] = []
    with Store(tmp_path / "runs.sqlite") as store:
        summary = bench("ds_cnn", ["ethos-u55-128", "cortex-m4"], ["int8"], ["local://", "qemu-aarch64://"],
                        ProfileSettings(threads=(1,)), store=store, on_cell=lambda k, w: cells.append((k, w)))
    assert summary["cells"] == 4 and not summary["failures"] and not summary["run_ids"]
    reasons = {s["cell"]: s["reason"] for s in summary["skipped"]}
    assert len(reasons) == 4
    for key, why in reasons.items():
        target = key.split("/")[1]
        assert f"no {target} kernels" in why and f"estimate://{target}" in why and "serial://" in why
    assert "estimates them" in reasons["ds_cnn/ethos-u55-128/int8/local:///t1"]
    assert "memory and fit" in reasons["ds_cnn/cortex-m4/int8/qemu-aarch64:///t1"]
    assert sum(w.startswith("skipped: ") for _, w in cells) == 4


def test_a_serial_board_is_not_refused_for_an_arm_target():
    """A board on serial:// may run an Ethos-U or Cortex-M program (devices/SERIAL_PROTOCOL.md): not skipped."""
    from edgerun.devices import get_spec
    from edgerun.estimate import run_skip_reason

    board = get_spec("serial:///dev/ttyACM0?baud=115200")
    assert run_skip_reason("cortex-m55", board) is None and run_skip_reason("ethos-u55-128", board) is None
    assert run_skip_reason("host", get_spec("local://")) is None


# ------------------------------------------------------------------------------------ with the toolchain
@pytest.fixture(scope="module")
def swept(arm_toolchain, edgerun_home, tmp_path_factory):
    """bench ds_cnn, ethos-u55-128 int8, on estimate://ethos-u55-128 and estimate://ethos-u85-256: one export,
    one estimated cell, one skipped."""
    from edgerun.profiling import ProfileSettings, bench
    from edgerun.store import Store

    path = tmp_path_factory.mktemp("estimate") / "runs.sqlite"
    devices = ["estimate://ethos-u55-128?clock=250e6&sram=16KiB", "estimate://ethos-u85-256"]
    cells: list[tuple[str, str]] = []
    with pytest.MonkeyPatch.context() as mp, Store(path) as store:
        mp.setenv("EDGERUN_HOME", str(edgerun_home))
        summary = bench("ds_cnn", ["ethos-u55-128"], ["int8"], devices, ProfileSettings(), store=store,
                        on_cell=lambda k, w: cells.append((k, w)))
        again = bench("ds_cnn", ["ethos-u55-128"], ["int8"], devices, ProfileSettings(), store=store)
        records = [store.get(r) for r in summary["run_ids"]]
    return summary, again, records, cells, path


def test_bench_on_estimate_devices_stores_an_estimated_record_and_skips_the_other_targets_cell(swept):
    from edgerun.core.artifact import read_manifest
    from edgerun.runtime.record import ESTIMATED

    summary, again, records, cells, _ = swept
    assert not summary["failures"] and summary["cells"] == 2
    [skip] = summary["skipped"]
    assert "estimate://ethos-u85-256" in skip["cell"] and "estimates ethos-u85-256 programs" in skip["reason"]
    assert any(w.startswith("skipped: ") for _, w in cells)
    [rec] = records
    assert rec.source == ESTIMATED and rec.device_name == "estimate://ethos-u55-128"
    assert rec.sweep_id == summary["sweep_id"] and "estimate://ethos-u55-128" in rec.cell
    m = read_manifest(rec.model.artifact)   # the cached export the cell estimated
    assert rec.estimate.cycles_total == m.compiler_report.cycles_total > 0
    assert rec.latency.median_ms == pytest.approx(m.compiler_report.cycles_total / 250e6 * 1e3, rel=1e-6)
    assert rec.estimate.fit.sram_bytes == 16 * 1024      # the device's board, asked whether it fits
    assert rec.estimate.fit.sram_fits == (rec.estimate.fit.sram_needed_bytes <= 16 * 1024)
    assert again["run_ids"] == summary["run_ids"] and again["skipped"] == summary["skipped"]   # resumed


def test_profile_on_an_estimate_device_is_the_estimate_records_and_a_wrong_target_is_refused(swept, cli, tmp_path):
    from edgerun.core.artifact import read_manifest
    from edgerun.estimate import estimated_record
    from edgerun.store import Store

    _, _, [rec], _, _ = swept
    store = tmp_path / "runs.sqlite"
    res = cli("profile", rec.model.artifact, "--device", "estimate://ethos-u55-128?clock=500e6", "--store", str(store),
              "--json")
    assert res.returncode == 0, res.stderr
    run = json.loads(res.stdout)["runs"][0]
    direct = estimated_record(read_manifest(rec.model.artifact), clock_hz=500e6)   # `edgerun estimate`'s record
    assert run["source"] == "estimated" and run["device"] == "estimate://ethos-u55-128"
    with Store(store) as s:
        stored = s.get(run["run_id"])
    assert stored.estimate.cycles_total == direct.estimate.cycles_total > 0
    assert stored.estimate.clock_hz == 500e6 and stored.latency.median_ms == pytest.approx(direct.latency.median_ms)
    wrong = cli("profile", rec.model.artifact, "--device", "estimate://ethos-u85-256", "--store", str(store), "--json")
    assert wrong.returncode == 2 and "estimate://ethos-u55-128" in json.loads(wrong.stdout)["error"]["hint"]
    listed = json.loads(cli("runs", "list", "--store", str(store), "--json").stdout)["runs"]
    assert len(listed) == 1   # the refused pair stored nothing


def test_the_report_keeps_estimated_runs_apart(swept):
    import dataclasses

    from edgerun.report import by_source, pareto_fronts, render
    from edgerun.runtime.record import MEASURED

    _, _, [rec], _, _ = swept
    # the same figures as if measured on the same device name: never on one axis, never one front
    measured = dataclasses.replace(rec, run_id="r-20000101-000000", source=MEASURED, estimate=None)
    assert {s: [r.run_id for r in g] for s, g in by_source([rec, measured])} == {
        "measured": [measured.run_id], "estimated": [rec.run_id]}
    assert {src for _, src in pareto_fronts([rec, measured])} == {"measured", "estimated"}
    md = render([rec], "md", title="t")
    assert "source=estimated" in md and "estimated by vela" in md
