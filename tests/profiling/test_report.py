"""Reports: every printer from one record schema; the HTML opened in real headless Chromium."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from edgerun.core.errors import UsageError
from edgerun.report import pareto_front, plot_pareto, render
from edgerun.runtime.accuracy import AccuracyResult
from edgerun.runtime.record import compare_records, flat_row

from .conftest import HOST_INFO, QEMU_INFO, analyse_lines, manifest, runner_lines

MS = 1_000_000


@pytest.fixture(scope="module")
def records(real_record):
    # Synthetic neighbours around the real run's median, tight enough that the verdicts are certain
    # whatever the machine's noise did to the real samples.
    rng = np.random.default_rng(0)
    med = real_record.latency.median_ms * MS
    int8 = analyse_lines(runner_lines((med * 0.5 * (1 + 0.02 * rng.standard_normal(30))).astype(int), warmup_ns=[med]),
                         manifest(scheme="int8", pte_bytes=4000), HOST_INFO)
    # the task accuracy of a held-out split, as analyse records it from the outputs run on the device
    int8 = dataclasses.replace(int8, accuracy=AccuracyResult(source="measured", reference="labels", outputs=(),
                                                             vectors=0, task_accuracy=0.93, task_samples=360))
    qemu = analyse_lines(runner_lines((med * 9 * (1 + 0.03 * rng.standard_normal(30))).astype(int)),
                         manifest(scheme="int8", pte_bytes=4000), QEMU_INFO, device_name="pi5-qemu")
    return [real_record, int8, qemu]


def _png_ok(data: bytes) -> tuple[int, int, int]:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    return im.width, im.height, len(colours) if colours else 1 << 20


def test_markdown_shows_only_varying_columns_and_ends_with_versions(records):
    # Verdicts between the two synthetic runs: certain, whatever noise the real run caught.
    comparisons = [compare_records(records[1], records[2]), compare_records(records[2], records[1])]
    md = render(records, "md", comparisons)
    header = next(line for line in md.splitlines() if line.startswith("| run_id"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert {"scheme", "device", "source", "median_ms", "p90_ms", "p99_ms"} <= set(cols)
    assert "model" not in cols and "recipe_hash" not in cols  # the same for every run
    assert "Common to all runs: model=tinynet" in md
    assert md.rstrip().splitlines()[-1].startswith("edgerun ")
    assert "ExecuTorch 1.5.1" in md.rstrip().splitlines()[-1]
    assert [c.verdict for c in comparisons] == ["slower", "faster"], [c.latency for c in comparisons]
    assert "**slower** (unreliable)" in md and "**faster** (unreliable)" in md  # one side is emulated
    assert "## Operators of " + records[0].run_id in md


def test_csv_has_one_row_per_run_with_the_flat_schema(records):
    rows = list(csv.DictReader(io.StringIO(render(records, "csv"))))
    assert [r["run_id"] for r in rows] == [r.run_id for r in records]
    assert list(rows[0]) == list(flat_row(records[0]))
    assert float(rows[1]["median_ms"]) == pytest.approx(records[1].latency.median_ms)
    assert rows[1]["task_accuracy"] == "0.93"


def test_json_is_strict_and_keeps_raw_samples(records):
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    d = json.loads(render(records, "json"), parse_constant=no_constants)
    assert len(d["runs"]) == 3
    assert len(d["runs"][0]["samples"]) == len(records[0].samples)
    assert d["runs"][2]["source"] == "emulated"


def test_unknown_format_and_no_runs_are_usage_errors(records):
    with pytest.raises(UsageError, match="unknown report format 'pdf'"):
        render(records, "pdf")
    with pytest.raises(UsageError, match="at least one run"):
        render([], "md")


def test_pareto_front_known_answer():
    pts = [(1.0, 10.0, 0.9),   # fastest
           (2.0, 5.0, 0.9),    # smallest
           (2.0, 10.0, 0.8),   # dominated by both
           (3.0, 10.0, 0.95)]  # most accurate
    assert pareto_front(pts) == [0, 1, 3]


def test_pareto_plot_is_a_png(records):
    w, h, colours = _png_ok(plot_pareto(records))
    assert w > 300 and h > 300 and colours > 10


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (scripts/setup installs it)")
def test_html_report_renders_in_headless_chromium_with_visible_plots(records, tmp_path):
    comparisons = [compare_records(records[0], r) for r in records[1:]]
    page = tmp_path / "report.html"
    page.write_text(render(records, "html", comparisons), encoding="utf-8")
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained

    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', text)
    alts = [a for a, _ in imgs]
    assert "latency distribution" in alts and "comparison across runs" in alts
    assert f"operators of {records[0].run_id}" in alts and "pareto latency size accuracy" in alts
    for alt, b64 in imgs:
        w, h, colours = _png_ok(base64.b64decode(b64))
        assert w > 200 and h > 80 and colours > 10, alt  # a real plot, not an empty canvas

    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
         page.as_uri()], capture_output=True, text=True, timeout=180)
    assert shot.is_file(), proc.stderr[-2000:]
    w, h, colours = _png_ok(shot.read_bytes())
    assert (w, h) == (1200, 2000)
    assert colours > 200  # text, tables and plots; a blank page has a handful

    from PIL import Image

    # The first plot sits in the upper half of the page: its region is not page background.
    im = Image.open(shot).convert("L")
    lower = np.asarray(im.crop((0, 600, 1200, 2000)), dtype=np.float64)
    assert lower.std() > 20


# ------------------------------------------------------------------ per device, comparable, readable
def test_pareto_fronts_are_per_device_and_never_mix_emulated_with_measured(records):
    from edgerun.report import pareto_fronts, pareto_groups

    groups = pareto_groups(records)
    assert list(groups) == [("local", "measured"), ("pi5-qemu (cpu=cortex-a76)", "emulated")]
    assert [r.run_id for r in groups[("pi5-qemu (cpu=cortex-a76)", "emulated")]] == [records[2].run_id]
    fronts = pareto_fronts(records)
    # the emulated run is on its own device's front: it is never dominated by (or dominates) a measured run
    assert fronts[("pi5-qemu (cpu=cortex-a76)", "emulated")] == [records[2].run_id]
    assert records[2].run_id not in fronts[("local", "measured")]


def test_a_report_compares_runs_of_the_same_model_and_source_only(records):
    from edgerun.report import comparable_pairs

    other = dataclasses.replace(records[1], run_id="r-other", model=dataclasses.replace(records[1].model,
                                                                                         name="othernet"))
    pairs = [(a.run_id, b.run_id) for a, b in comparable_pairs([records[0], other, records[1], records[2]])]
    assert pairs == [(records[0].run_id, records[1].run_id)]  # not othernet, not the emulated run


def test_html_warnings_fold_under_the_summary_before_the_first_plot(records):
    text = render(records, "html", [compare_records(records[1], records[2])])
    first_plot = text.index("<img")
    folded = text.index('<details class="warnings"><summary>')
    assert text.index("<h2>Summary</h2>") < folded < first_plot
    n = sum(len(r.warnings) for r in records)
    assert f"⚠ {n} warning(s) in" in text
    # every warning box sits inside a <details>: none stands between the summary and the first plot
    assert text[:first_plot].count('<div class="warn">') == n
    assert text[:folded].count('<div class="warn">') == 0


def test_compare_tables_show_absolute_changes_of_db_and_fractions(records):
    md = render(records, "md", [compare_records(records[1], records[2])])
    cv_row = next(line for line in md.splitlines() if line.startswith("| cv |"))
    assert cv_row.rstrip(" |").endswith("pp") and "%" not in cv_row.split("|")[-2]
    med_row = next(line for line in md.splitlines() if line.startswith("| median_ms |"))
    assert med_row.split("|")[-2].strip().endswith("%")


def test_long_operator_group_names_are_capped_with_the_full_list_one_click_away(real_record):
    from edgerun.runtime.optable import OperatorRow

    ops = tuple(f"aten.op_number_{i}.default" for i in range(12))
    long_row = OperatorRow(name="+".join(ops), kind="operator", delegated=False, backend=None, count=1,
                           median_ms=0.5, share=0.5, op_types=ops, samples_ms=(0.5,) * 8)
    rec = dataclasses.replace(real_record, operators=dataclasses.replace(
        real_record.operators, rows=(long_row, *real_record.operators.rows)))
    text = render([rec], "html")
    summary = re.search(r"<details class=ops><summary>([^<]*)</summary>", text).group(1)
    assert len(summary) <= 80 and re.search(r"… \(\+\d+ more\)$", summary)
    for op in ops:
        assert f"<li>{op}</li>" in text
    md = render([rec], "md")
    assert "+".join(ops) not in md and "more)" in md
    d = json.loads(render([rec], "json"))
    assert d["runs"][0]["operators"]["rows"][0]["name"] == "+".join(ops)  # JSON keeps the full name


def test_plots_are_saved_without_clipping(records):
    """A tight bounding box: tick labels as long as '<model> · <scheme> · <device> · <run id>' stay in the image."""
    from PIL import Image

    from edgerun.report import plot_comparison

    im = Image.open(io.BytesIO(plot_comparison(records))).convert("L")
    arr = np.asarray(im)
    # the image ends in a margin of background: nothing (a label) was cut at its edges
    for edge in (arr[:2, :], arr[-2:, :], arr[:, :2], arr[:, -2:]):
        assert edge.min() > 200
