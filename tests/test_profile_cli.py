"""``edgerun deploy | profile | bench`` through the real entry point, on real devices (local and
qemu-aarch64), with real stores: what a user scripting the tool sees."""

import json
import shutil
import sqlite3

import pytest

QEMU = shutil.which("qemu-aarch64")


@pytest.fixture(scope="module")
def digits(make_artifact):
    return make_artifact("digits_cnn", "rpi5", "int8")


def _json(r):
    assert r.stdout.strip(), r.stderr
    return json.loads(r.stdout)


def test_profile_json_has_the_promised_fields_and_is_stored(cli, digits, tmp_path):
    store = tmp_path / "results.sqlite"
    r = cli("profile", str(digits), "--device", "local://", "--iterations", "20", "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    obj = _json(r)
    for key in ("run_id", "median", "p90", "p99", "operators"):
        assert key in obj, key
    assert 0 < obj["median"] <= obj["p90"] <= obj["p99"]
    assert obj["operators"] and obj["source"] == "measured"
    assert obj["accuracy"]["outputs"][0]["snr_db"] > 15
    assert obj["memory"]["peak_rss_bytes"] > 0 and obj["memory"]["pte_bytes"] > 0
    rows = sqlite3.connect(store).execute("SELECT run_id, median_ms FROM runs").fetchall()
    assert rows == [(obj["run_id"], pytest.approx(obj["median"]))]
    n = sqlite3.connect(store).execute("SELECT count(*) FROM samples WHERE run_id=? AND warmup=0",
                                       (obj["run_id"],)).fetchone()[0]
    assert n == 20  # every raw sample kept


def test_two_real_runs_of_one_artifact_compare_consistently_with_their_samples(cli, make_artifact, tmp_path):
    """Two real profiles of one program through the real CLI, compared. What the verdict must be cannot
    be pinned here: on this shared 2-core machine the same runner binary's median moved by up to 45 %
    between processes a second apart (measured 2026-12-01: 4.6 / 4.9 / 6.7 ms for MobileNetV2 int8 on
    one thread, each run's own CV 1-2 %), so "no significant change" for identical programs is a
    property of a quiet machine, checked by benchmarks/ (the project's rule: timing targets never in
    unit tests). What is pinned: the verdict agrees with the runs' own samples -- "slower" only when
    B's median is above A's by more than the practical effect, "faster" only when below, and "no
    significant change" whenever the medians are within it -- and every metric is reported."""
    art = make_artifact("mobilenet_v2", "rpi5", "int8")
    store = str(tmp_path / "s.sqlite")
    ids, medians = [], []
    for _ in range(2):
        r = cli("profile", str(art), "-d", "local://", "--warmup", "10", "--iterations", "40", "--threads", "1",
                "--no-etdump", "--store", store, "--json")
        assert r.returncode == 0, r.stderr
        ids.append(_json(r)["run_id"])
        medians.append(_json(r)["median"])
    r = cli("compare", *ids, "--store", store, "--json", "--min-effect", "0.10")
    assert r.returncode == 0, r.stderr
    c = _json(r)
    rel = (medians[1] - medians[0]) / medians[0]
    assert c["latency"]["delta_rel"] == pytest.approx(rel, rel=1e-6, abs=1e-9)
    if abs(rel) <= 0.10:
        assert c["verdict"] == "no significant change", (medians, c["verdict"])
    else:
        # on a loaded machine the probe sees it and compare withholds the change ("conditions differ")
        assert c["verdict"] in ("slower" if rel > 0 else "faster", "no significant change", "conditions differ"), \
            (medians, c["verdict"])
    assert {m["metric"] for m in c["metrics"]} >= {"median_ms", "p90_ms", "peak_rss_bytes", "pte_bytes"}


def test_profile_thread_sweep_stores_one_run_per_count(cli, digits, tmp_path):
    # what is checked is the sweep (a stored run per thread count): the ETDump and the held-out dataset
    # run, both checked by other tests of this file, are left out of its two runs
    store = str(tmp_path / "s.sqlite")
    r = cli("profile", str(digits), "-d", "local://", "--threads", "1,2", "--iterations", "5", "--no-etdump",
            "--no-task-accuracy", "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    runs = _json(r)["runs"]
    assert len(runs) == 2
    threads = sorted(json.loads(cli("runs", "show", x["run_id"], "--store", store, "--json").stdout)
                     ["record"]["provenance"]["threads"] for x in runs)
    assert threads == [1, 2]


def test_unreachable_device_fails_that_cell_clearly_and_keeps_the_others(cli, digits, tmp_path):
    store = str(tmp_path / "s.sqlite")
    r = cli("profile", str(digits), "-d", "local://,ssh://nobody@127.0.0.1:1?connect_timeout=3", "--iterations", "3",
            "--store", store, "--json")
    assert r.returncode != 0
    obj = _json(r)
    assert len(obj["runs"]) == 1 and obj["runs"][0]["device"] == "local://"
    (failure,) = obj["failures"]
    assert "127.0.0.1" in failure["device"] and failure["error"]["stage"] in ("deploy", "connect")
    assert sqlite3.connect(store).execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_deploy_reports_what_it_sent(cli, digits, tmp_path):
    dev = f"local://?work_dir={tmp_path / 'dev'}"
    first = _json(cli("deploy", str(digits), "-d", dev, "--json"))["deployments"][0]
    again = _json(cli("deploy", str(digits), "-d", dev, "--json"))["deployments"][0]
    assert first["pushed"] and not again["pushed"] and again["skipped"]


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-aarch64 not installed (Debian qemu-user; scripts/setup installs it)")
def test_bench_sweeps_resumes_and_writes_a_report(cli, tmp_path):
    store = str(tmp_path / "s.sqlite")
    report = tmp_path / "bench.html"
    args = ["bench", "digits_cnn", "--targets", "rpi5", "--schemes", "int8",
            "--devices", "local://,qemu-aarch64://?cpu=cortex-a76", "--iterations", "5", "--warmup", "1",
            "--store", store, "--report", str(report), "--json"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    first = _json(r)
    assert first["cells"] == 2 and len(first["run_ids"]) == 2 and not first["failures"]
    sources = {x["device"]: x["source"] for x in first["runs"]}
    assert sources["local://"] == "measured" and sources["qemu-aarch64://"] == "emulated"
    # task accuracy of the held-out split, from outputs each device produced, labelled like the device
    task = {x["device"]: x["accuracy"] for x in first["runs"]}
    assert task["qemu-aarch64://"]["source"] == "emulated" and task["qemu-aarch64://"]["task_samples"] > 0
    assert abs(task["qemu-aarch64://"]["task_accuracy"] - task["local://"]["task_accuracy"]) <= 0.01
    html = report.read_text()
    assert html.count("<img") >= 4 and 'alt="pareto' in html  # latency, samples, comparison, Pareto
    # the same sweep again finds every cell stored and runs nothing
    again = _json(cli(*args))
    assert again["sweep_id"] == first["sweep_id"] and sorted(again["run_ids"]) == sorted(first["run_ids"])
    assert sqlite3.connect(store).execute("SELECT count(*) FROM runs").fetchone()[0] == 2


def test_run_on_a_device_brings_results_into_a_run_directory(cli, digits, tmp_path):
    r = cli("run", str(digits), "--device", f"local://?work_dir={tmp_path / 'dev'}", "--iterations", "3", "--json")
    assert r.returncode == 0, r.stderr
    (run,) = _json(r)["runs"]
    run_dir = __import__("pathlib").Path(run["run_dir"])
    assert (run_dir / "outputs" / "output_0.npy").is_file() and (run_dir / "runner.jsonl").is_file()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "ok"
    assert len(run["runner"]["execute_ns"]) == 3


def test_run_needs_a_bundle_or_a_device(cli, digits):
    r = cli("run", str(digits), "--json")
    assert r.returncode == 2 and "--device" in _json(r)["error"]["hint"]


def test_profile_reports_task_accuracy_of_the_held_out_split_run_on_the_device(cli, digits, tmp_path):
    manifest = json.loads((digits / "manifest.json").read_text())
    ds = manifest["dataset"]
    import numpy as np

    inputs, labels = np.load(digits / ds["inputs"]), np.load(digits / ds["labels"])
    assert inputs.shape == (ds["samples"], *manifest["inputs"][0]["shape"]) and labels.dtype == np.int64
    store = str(tmp_path / "s.sqlite")
    r = cli("profile", str(digits), "-d", f"local://?work_dir={tmp_path / 'dev'}", "--iterations", "3",
            "--no-etdump", "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    acc = _json(r)["accuracy"]
    assert acc["source"] == "measured" and acc["task_samples"] == ds["samples"] == len(labels)
    # the same program on the same host runtime as export-time verification: the same predictions
    assert acc["task_accuracy"] == manifest["verification"]["task_accuracy"]["program"]
    assert acc["outputs"][0]["snr_db"] > 15  # the test vector's comparison is still there
    # --no-task-accuracy skips the dataset run; --task-accuracy on an artifact without one is a usage error
    r = cli("profile", str(digits), "-d", "local://", "--iterations", "3", "--no-etdump", "--no-task-accuracy",
            "--store", store, "--json")
    assert r.returncode == 0, r.stderr
    assert _json(r)["accuracy"]["task_accuracy"] is None
    bare = tmp_path / "bare"
    shutil.copytree(digits, bare)
    m = json.loads((bare / "manifest.json").read_text())
    del m["dataset"]
    (bare / "manifest.json").write_text(json.dumps(m))
    r = cli("profile", str(bare), "-d", "local://", "--task-accuracy", "--store", store, "--json")
    assert r.returncode == 2 and "no dataset" in _json(r)["error"]["message"]


def test_a_failed_cell_keeps_the_finished_ones_and_the_sweep_resumes(cli, tmp_path):
    """A sweep whose second device is unreachable: the local cell is stored, the exit is non-zero,
    and re-running the same sweep skips the stored cell and only retries the failed one. The cell is the
    one test_bench_sweeps_resumes_and_writes_a_report exports (digits_cnn, rpi5, int8): when that test ran
    first, bench finds the artifact in the session's export cache (EDGERUN_HOME/artifacts, keyed by the
    whole recipe) instead of exporting the same model again; run alone, this test exports it."""
    store = str(tmp_path / "s.sqlite")
    args = ["bench", "digits_cnn", "--targets", "rpi5", "--schemes", "int8",
            "--devices", "local://,ssh://nobody@127.0.0.1:1?connect_timeout=2", "--iterations", "3",
            "--warmup", "1", "--store", store, "--report", str(tmp_path / "b.html"), "--json"]
    first = cli(*args)
    assert first.returncode != 0
    obj = _json(first)
    assert len(obj["run_ids"]) == 1 and len(obj["failures"]) == 1
    assert "127.0.0.1" in obj["failures"][0]["cell"]
    again = _json(cli(*args))
    assert again["sweep_id"] == obj["sweep_id"] and again["run_ids"] == obj["run_ids"]  # not re-run
    assert len(again["failures"]) == 1  # the unreachable device was tried again
    assert sqlite3.connect(store).execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_a_locked_store_keeps_the_measured_record_for_runs_import(cli, digits, tmp_path, edgerun_home):
    """Issue 9 item 8: a store locked at save time lost a finished measurement while run.json said ok.
    The lock is taken once the run is on the device (its run.json says stage run), so the store is
    free when profile opens it and locked when the finished record is saved."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    store = tmp_path / "results.sqlite"
    assert cli("runs", "list", "--store", str(store), "--json").returncode == 0  # a store with its schema
    runs = Path(edgerun_home) / "runs"
    before = set(runs.glob("*")) if runs.exists() else set()
    exe = Path(sys.executable).with_name("edgerun")
    proc = subprocess.Popen([str(exe), "profile", str(digits), "--device", "local://", "--iterations", "3",
                             "--min-time-ms", "4000", "--no-task-accuracy", "--no-etdump", "--store", str(store),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EDGERUN_STORE_TIMEOUT": "0.5"})
    holder = None
    try:
        deadline = time.monotonic() + 300
        while holder is None and time.monotonic() < deadline and proc.poll() is None:
            for d in set(runs.glob("*")) - before if runs.exists() else ():
                status = d / "run.json"
                if status.is_file() and '"stage": "run"' in status.read_text():
                    holder = sqlite3.connect(store, isolation_level=None)
                    holder.execute("BEGIN IMMEDIATE")  # another process now writes the store
                    break
            time.sleep(0.05)
        assert holder is not None, "the run never reached its run stage"
        out, err_text = proc.communicate(timeout=300)
    finally:
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
        proc.kill()
    assert proc.returncode == 7, err_text[-2000:]
    [failure] = json.loads(out)["failures"]
    err = failure["error"]
    assert err["type"] == "RecordKept" and "edgerun runs import" in (err["hint"] or "")
    [run_dir] = set(runs.glob("*")) - before
    record = json.loads((run_dir / "record.json").read_text())
    assert len([s for s in record["samples"] if not s["warmup"]]) >= 3  # the whole record, every sample
    imported = cli("runs", "import", str(run_dir), "--store", str(store), "--json")
    assert imported.returncode == 0, imported.stderr[-2000:]
    listed = _json(cli("runs", "list", "--store", str(store), "--json"))
    assert record["run_id"] in json.dumps(listed)
