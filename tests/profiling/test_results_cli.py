"""`edgerun runs list|show`, `compare` and `report` through the real console script."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgerun.store import SCHEMA_VERSION, Store

from .conftest import HOST_INFO, analyse_lines, manifest, runner_lines

MS = 1_000_000


@pytest.fixture(scope="module")
def store(real_record, interleaved_runs, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-store") / "results.sqlite"
    a_ns, b_ns = interleaved_runs
    rng = np.random.default_rng(5)
    same_a = analyse_lines(runner_lines(a_ns), manifest(), HOST_INFO, run_id="r-20261128-aaaaaa")
    same_b = analyse_lines(runner_lines(b_ns), manifest(), HOST_INFO, run_id="r-20261128-bbbbbb")
    other = analyse_lines(runner_lines((np.median(a_ns) * 1.5 * (1 + 0.01 * rng.standard_normal(len(a_ns)))).astype(int)),
                    manifest(name="othernet"), HOST_INFO, run_id="r-20261128-cccccc")
    with Store(path) as s:
        for r in (real_record, same_a, same_b, other):
            s.save(r)
    return path


def _json(proc):
    assert proc.stdout.count("\n") == 1, proc.stdout  # exactly one JSON object on stdout
    return json.loads(proc.stdout)


def test_runs_list_json_is_newest_first(cli, store):
    d = _json(cli("runs", "list", "--store", str(store), "--json"))
    ids = [r["run_id"] for r in d["runs"]]
    assert ids[0] == "r-20261128-cccccc" and len(ids) == 4


def test_runs_list_human_table(cli, store):
    p = cli("runs", "list", "--store", str(store))
    assert p.returncode == 0 and "r-20261128-aaaaaa" in p.stdout and "othernet" in p.stdout


def test_runs_show_by_prefix_has_the_profile_fields(cli, store, real_record):
    d = _json(cli("runs", "show", real_record.run_id[:14], "--store", str(store), "--json"))
    assert d["run_id"] == real_record.run_id
    assert d["median"] == pytest.approx(real_record.latency.median_ms) and d["unit"] == "ms"
    assert {"p90", "p99", "operators", "labels"} <= set(d)
    assert d["operators"][0]["name"] == real_record.operators.rows[0].name
    assert [o["name"] for o in d["delegate_ops"]] == [o.name for o in real_record.operators.delegate_ops]
    assert d["operator_coverage"] == pytest.approx(real_record.operators.coverage)
    p = cli("runs", "show", real_record.run_id, "--store", str(store))
    assert p.returncode == 0 and "XnnpackBackend[" in p.stdout  # markup-like names printed literally


def test_unknown_run_id_is_a_clear_error(cli, store):
    p = cli("runs", "show", "r-19990101", "--store", str(store), "--json")
    assert p.returncode == 7
    err = _json(p)["error"]
    assert "no run 'r-19990101'" in err["message"] and "edgerun runs list" in err["hint"]
    p = cli("runs", "show", "r-19990101", "--store", str(store))
    assert p.returncode == 7 and "no run 'r-19990101'" in p.stderr


def test_two_runs_of_the_same_program_compare_as_no_significant_change(cli, store):
    d = _json(cli("compare", "r-20261128-aaa", "r-20261128-bbb", "--store", str(store), "--json"))
    assert d["verdict"] == "no significant change"
    assert not any("different models" in w for w in d["warnings"])


def test_comparing_different_models_is_allowed_with_a_warning(cli, interleaved_runs, tmp_path):
    # a tight baseline at the real runs' median against othernet at 1.5x: the verdict does not depend on how
    # loaded the machine was while the real runs were timed (their spread can reach 1.5x then)
    rng = np.random.default_rng(7)
    med = np.median(interleaved_runs[0])
    store = tmp_path / "results.sqlite"
    with Store(store) as s:
        for scale, name, run_id in ((1.0, "tinynet", "r-20261128-dddddd"), (1.5, "othernet", "r-20261128-eeeeee")):
            ns = (med * scale * (1 + 0.01 * rng.standard_normal(60))).astype(int)
            s.save(analyse_lines(runner_lines(ns), manifest(name=name), HOST_INFO, run_id=run_id))
    d = _json(cli("compare", "r-20261128-ddd", "r-20261128-eee", "--store", str(store), "--json"))
    assert d["verdict"] == "slower"
    assert any("different models (tinynet vs othernet)" in w for w in d["warnings"])


def test_report_writes_html_and_prints_markdown(cli, store, tmp_path):
    out = tmp_path / "r.html"
    d = _json(cli("report", "r-20261128-aaa", "r-20261128-bbb", "-o", str(out), "--store", str(store), "--json"))
    assert d["format"] == "html" and out.stat().st_size == d["bytes"] > 10_000
    assert d["verdicts"] == {"r-20261128-bbbbbb": "no significant change"}
    md = cli("report", "r-20261128-aaa", "r-20261128-ccc", "--format", "md", "--store", str(store))
    assert md.returncode == 0 and md.stdout.startswith("# edgerun report") and "| model |" in md.stdout
    csv_out = tmp_path / "r.csv"
    assert cli("report", "r-20261128-aaa", "-o", str(csv_out), "--store", str(store)).returncode == 0
    assert csv_out.read_text().startswith("run_id,")


def test_a_store_from_a_newer_edgerun_is_refused(cli, tmp_path):
    path = tmp_path / "future.sqlite"
    with Store(path) as s:
        s._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 5,))
    p = cli("runs", "list", "--store", str(path), "--json")
    assert p.returncode == 7
    assert "newer than this edgerun" in _json(p)["error"]["message"]


def test_bad_options_are_usage_errors(cli, store):
    p = cli("compare", "r-20261128-aaa", "r-20261128-bbb", "--alpha", "3", "--store", str(store), "--json")
    assert p.returncode == 2 and "--alpha" in _json(p)["error"]["message"]
    p = cli("report", "r-20261128-aaa", "--format", "pdf", "--store", str(store), "--json")
    assert p.returncode == 2 and "pdf" in _json(p)["error"]["message"]


def test_runs_table_for_bench_shows_identity_that_varies_and_the_metrics(store, capsys):
    from edgerun.cli.results_cmd import print_runs_table

    with Store(store) as s:
        recs = [s.get("r-20261128-aaa"), s.get("r-20261128-ccc")]
    print_runs_table(recs, title="bench")
    text = capsys.readouterr().out
    assert "r-20261128-aaaaaa" in text and "othernet" in text
    header = next(line for line in text.splitlines() if "run_id" in line)
    assert "model" in header and "median_ms" in header and "device" not in header  # same device: not a column
    assert "Common to all: " in text and "device=local" in text


def test_report_json_without_a_file_is_printed_or_inside_the_json_object(cli, store):
    p = cli("report", "r-20261128-aaa", "r-20261128-bbb", "--format", "json", "--store", str(store))
    assert p.returncode == 0, p.stderr
    printed = json.loads(p.stdout)
    assert [r["run_id"] for r in printed["runs"]] == ["r-20261128-aaaaaa", "r-20261128-bbbbbb"]
    d = _json(cli("report", "r-20261128-aaa", "r-20261128-bbb", "--format", "json", "--store", str(store), "--json"))
    assert d["path"] is None and d["report"] == printed
    md = _json(cli("report", "r-20261128-aaa", "--format", "md", "--store", str(store), "--json"))
    assert md["report"].startswith("# edgerun report")


def test_report_compares_runs_of_the_same_model_only(cli, store):
    d = _json(cli("report", "r-20261128-aaa", "r-20261128-ccc", "r-20261128-bbb", "-o", "/dev/null",
                  "--format", "md", "--store", str(store), "--json"))
    # ccc is another model: it is not compared with aaa; bbb is, against the first run of its model
    assert d["verdicts"] == {"r-20261128-bbbbbb": "no significant change"}


def test_runs_list_shows_the_emulated_cpu(cli, tmp_path):
    path = tmp_path / "r.sqlite"
    qemu = {**HOST_INFO, "arch": "aarch64", "cpu_model": "max", "emulated": True, "emulator": "qemu-aarch64 -cpu max"}
    with Store(path) as s:
        s.save(analyse_lines(runner_lines([5 * MS] * 12), manifest(), qemu, device_name="qemu-aarch64://",
                             run_id="r-20261128-eeeeee"))
    d = _json(cli("runs", "list", "--store", str(path), "--json"))
    assert d["runs"][0]["device"] == "qemu-aarch64://"
    assert d["runs"][0]["device_label"] == "qemu-aarch64://?cpu=max"
    p = cli("runs", "list", "--store", str(path))
    assert p.returncode == 0 and "qemu-aarch64://?cpu=max" in p.stdout


def test_a_damaged_store_exits_7_with_a_clear_message(cli, tmp_path):
    from .test_store import _corrupt

    path = tmp_path / "r.sqlite"
    with Store(path) as s:
        for i in range(5):
            s.save(analyse_lines(runner_lines([5 * MS] * 12), manifest(), HOST_INFO, run_id=f"r-2026-{i}"))
    _corrupt(path)
    p = cli("runs", "list", "--store", str(path), "--json")
    assert p.returncode == 7, p.stdout + p.stderr
    assert "damaged" in _json(p)["error"]["message"]


def test_runs_import_stores_kept_records_once(cli, tmp_path):
    import sqlite3

    from edgerun.store import RecordKept, save_or_keep

    path, run_dir = tmp_path / "r.sqlite", tmp_path / "run-1"
    Store(path).close()
    rec = analyse_lines(runner_lines([5 * MS] * 12), manifest(), HOST_INFO, run_id="r-20261128-kkkkkk")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RecordKept):
            save_or_keep(rec, path, run_dir, timeout=0.1)
        # the CLI waits EDGERUN_STORE_TIMEOUT seconds, then says the store is locked (exit 7)
        p = cli("runs", "import", str(run_dir), "--store", str(path), "--json", env={"EDGERUN_STORE_TIMEOUT": "0.2"})
        assert p.returncode == 7 and "locked" in _json(p)["error"]["message"]
    finally:
        holder.close()
    d = _json(cli("runs", "import", str(run_dir), "--store", str(path), "--json"))
    assert (d["imported"], d["skipped"]) == (1, 0) and d["runs"][0]["run_id"] == "r-20261128-kkkkkk"
    d = _json(cli("runs", "import", str(run_dir), "--store", str(path), "--json"))
    assert (d["imported"], d["skipped"]) == (0, 1)
    shown = _json(cli("runs", "show", "r-20261128-kkkkkk", "--store", str(path), "--json"))
    assert shown["record"]["samples"] == rec.to_dict()["samples"]
    p = cli("runs", "import", str(tmp_path / "nowhere"), "--store", str(path), "--json")
    assert p.returncode == 2 and "no record.json" in _json(p)["error"]["message"]


def test_a_report_that_cannot_be_written_is_this_machines_problem_not_a_bug(cli, store, tmp_path):
    """Issue 9 item 15: `report -o /proc/…` exited 70 (internal error)."""
    for target in ("/proc/edgerun-report.html", str(tmp_path / "a-file" / "r.html")):
        (tmp_path / "a-file").write_text("not a directory")
        p = cli("report", "r-20261128-aaa", "-o", target, "--store", str(store), "--json")
        assert p.returncode == 17, p.stdout + p.stderr[-1000:]
        err = _json(p)["error"]
        assert err["type"] == "EnvironmentProblem" and target in err["message"] and err["stage"] == "report"
