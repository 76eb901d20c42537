"""Load-aware comparisons (issue 20): on a loaded machine two profiles of one artifact compared as
"faster". Every run records the machine's load (1-minute load average with the core count, the share
of the cores busy and stolen just before the run, from /proc/stat), and `compare` says "conditions
differ" instead of calling a change when the load was high on either side or differed a lot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgerun.devices.info import DeviceInfo
from edgerun.devices.probe import parse_probe
from edgerun.report import VERDICT_CONDITIONS, compare_runs, machine_conditions

from .conftest import HOST_INFO, analyse_lines, manifest, runner_lines

MS = 1_000_000


def _probe(loadavg="0.20 0.30 0.40 1/100 42", stat1="cpu  100 0 100 800 0 0 0 0 0 0",
           stat2="cpu  110 0 110 880 0 0 0 0 0 0") -> DeviceInfo:
    raw = "\n".join(["@@section arch", "x86_64", "@@section nproc", "4", "@@section loadavg", loadavg,
                     "@@section stat1", stat1, "@@section stat2", stat2])
    return parse_probe(raw, transport="local")


def test_the_probe_reads_load_busy_and_steal_shares():
    info = _probe()
    assert info.load_1m == 0.2 and info.cores == 4 and info.load_per_core == pytest.approx(0.05)
    assert info.cpu_busy == pytest.approx(20 / 100) and info.cpu_steal == 0.0
    stolen = _probe(stat2="cpu  130 0 100 850 0 0 0 20 0 0")  # 30 user, 50 idle, 20 steal of 100
    assert stolen.cpu_busy == pytest.approx(0.3) and stolen.cpu_steal == pytest.approx(0.2)


@pytest.mark.parametrize("loadavg,stat1,stat2", [
    ("", "", ""),                                          # unreadable (no /proc)
    ("junk", "cpu x y", "cpu  1 2 3"),                     # garbage
    ("-3 0 0", "cpu  100 0 100 800 0 0 0 0", "cpu  90 0 100 800 0 0 0 0"),  # negative load, counter went back
    ("0.5 0 0", "cpu  100 0 100 800", "cpu  100 0 100 800"),             # an empty window
])
def test_an_unreadable_load_is_none_never_a_guess(loadavg, stat1, stat2):
    info = _probe(loadavg, stat1, stat2)
    assert info.cpu_busy is None and info.cpu_steal is None
    assert info.load_1m is None or info.load_1m == 0.5


def test_old_and_damaged_records_read_without_the_load():
    assert DeviceInfo.from_json(HOST_INFO).load_1m is None
    bad = DeviceInfo.from_json({**HOST_INFO, "load_1m": "high", "cpu_busy": [1], "cpu_steal": True})
    assert (bad.load_1m, bad.cpu_busy, bad.cpu_steal) == (None, None, None)
    good = DeviceInfo.from_json({**HOST_INFO, "load_1m": 3, "cpu_busy": 0.5, "cpu_steal": 0.0})
    assert good.to_json()["load_1m"] == 3.0 and good.load_per_core == 1.5


def test_the_local_probe_records_the_load_where_proc_is_readable():
    from edgerun.devices import resolve_device

    with resolve_device("local://") as dev:
        info = dev.info()
    assert info.load_1m is not None and info.load_1m >= 0
    assert info.cpu_busy is not None and 0 <= info.cpu_busy <= 1


def _pair(info_a: dict, info_b: dict, *, slower: float = 1.3):
    rng = np.random.default_rng(0)
    a_ns = (5 * MS * (1 + 0.01 * rng.standard_normal(40))).astype(int)
    b_ns = (a_ns * slower).astype(int)
    a = analyse_lines(runner_lines(a_ns), manifest(), info_a, run_id="r-20261206-aaaaaa")
    b = analyse_lines(runner_lines(b_ns), manifest(), info_b, run_id="r-20261206-bbbbbb")
    return a, b


QUIET = {**HOST_INFO, "load_1m": 0.1, "cpu_busy": 0.05, "cpu_steal": 0.0}


@pytest.mark.parametrize("b_info,why", [
    ({**QUIET, "cpu_busy": 0.95, "load_1m": 8.3}, "loaded machine"),        # the case: B ran loaded
    ({**QUIET, "cpu_busy": 0.45}, "load differed"),                          # neither high, but 5% vs 45%
    ({**QUIET, "cpu_steal": 0.2}, "stole 20%"),                              # a noisy cloud neighbour
    ({**HOST_INFO, "load_1m": 5.0}, "load average 5.00 on 2 cores"),         # only the load average known
])
def test_compare_says_conditions_differ_instead_of_slower(b_info, why):
    a, b = _pair(QUIET, b_info)
    c = compare_runs(a, b)
    assert c.latency.verdict == "slower"          # the samples alone would call it
    assert c.verdict == VERDICT_CONDITIONS and c.reliable is False
    assert any(why in w for w in c.warnings), c.warnings


def test_quiet_runs_and_old_records_still_get_a_verdict():
    a, b = _pair(QUIET, {**QUIET, "cpu_busy": 0.1, "load_1m": 0.4})
    assert machine_conditions(a, b) == [] and compare_runs(a, b).verdict == "slower"
    a, b = _pair(HOST_INFO, HOST_INFO)            # recorded before the load was probed
    assert compare_runs(a, b).verdict == "slower"
    a, b = _pair(QUIET, {**QUIET, "cpu_busy": 0.95}, slower=1.0)
    assert compare_runs(a, b).verdict == "no significant change"  # nothing claimed: nothing to withdraw


def test_the_compare_command_and_the_report_use_the_conditions(cli, tmp_path):
    from edgerun.store import Store

    a, b = _pair(QUIET, {**QUIET, "cpu_busy": 0.95, "load_1m": 8.3})
    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        s.save(a)
        s.save(b)
    r = cli("compare", a.run_id, b.run_id, "--store", str(path), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["verdict"] == VERDICT_CONDITIONS and d["latency"]["verdict"] == "slower" and not d["reliable"]
    r = cli("report", a.run_id, b.run_id, "--store", str(path), "-f", "json")
    assert r.returncode == 0, r.stderr
    assert VERDICT_CONDITIONS in r.stdout
