"""``edgerun runs list | show | import``, ``edgerun compare``, ``edgerun report`` — reading the results store.

Also the pieces ``profile`` and ``bench`` reuse: :func:`record_json` (the ``--json`` object of a
run: ``run_id``, ``median``/``p90``/``p99`` in ms, ``operators`` ...) and :func:`print_record` (the
tables a person sees).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from edgerun.core.errors import UsageError
from edgerun.runtime.columns import cap_name, device_label, format_ms

from . import options as opt
from ._common import DebugOpt, JsonOpt, SafeConsole, execute

# Tables are wide: when stdout is not a terminal (a pipe, a log file) do not squeeze them to 80 columns.
out = SafeConsole(width=None if sys.stdout.isatty() else 200)

StoreOpt = Annotated[Optional[Path], typer.Option(
    "--store", envvar="EDGERUN_STORE", help="Results store (default: EDGERUN_HOME/results.sqlite).")]


def _open(store: Path | None):
    from edgerun.store import Store

    return Store(store)


def record_json(record, *, full: bool = False) -> dict:
    """The ``--json`` object of one run. Times in ms (``median``, ``p90``, ``p99``)."""
    d = {
        "run_id": record.run_id,
        "model": record.model.name,
        "device": record.device_name,
        "device_label": device_label(record.device_name, record.device),
        "source": record.source,
        "median": record.latency.median_ms,
        "p90": record.latency.p90_ms,
        "p99": record.latency.p99_ms,
        "unit": "ms",
        "latency": record.latency.to_dict(),
        "operators": [{k: v for k, v in r.to_dict().items() if k != "samples_ms"}
                      for r in (record.operators.rows if record.operators else ())],
        # inside delegate calls: the backend's own events (a model lowered whole is one operator row)
        "delegate_ops": [{k: v for k, v in r.to_dict().items() if k != "samples_ms"}
                         for r in (record.operators.delegate_ops if record.operators else ())],
        "operator_sum_ms": record.operators.op_sum_ms if record.operators else None,
        "operator_coverage": record.operators.coverage if record.operators else None,
        "memory": record.to_dict()["memory"],
        "accuracy": record.accuracy.to_dict() if record.accuracy else None,
        "labels": record.labels,
        "llm": record.llm.to_dict() if record.llm else None,
        "warnings": list(record.warnings),
    }
    if full:
        d["record"] = record.to_dict()
    return d


_ms = format_ms  # the one time formatter (edgerun.runtime.columns)


def print_record(record, *, top: int = 10) -> None:
    """Rich tables for a person: latency, memory, operators, accuracy, warnings, provenance."""
    from edgerun.report import fmt_value

    lat = record.latency
    src = {"emulated": "[yellow]emulated[/]", "estimated": "[magenta]ESTIMATED (not run)[/]"}.get(record.source,
                                                                                              "[green]measured[/]")
    cpu = record.device.cpu_model or record.device.arch
    out.print(f"[bold]{record.run_id}[/]  {escape(record.model.name)} ({escape(record.model.scheme or '?')}) on "
              f"[bold]{escape(device_label(record.device_name, record.device))}[/] ({escape(str(cpu))}"
              f"{'' if record.provenance.threads is None else f', {record.provenance.threads} threads'}) — "
              f"{src}, {record.created_at}", highlight=False)
    t = Table(title="Latency (execute, timed iterations)", title_justify="left")
    for col in ("n", "median ms", "95% CI ms", "p90 ms", "p99 ms", "mean ms", "std ms", "min ms", "max ms", "CV"):
        t.add_column(col, justify="right")
    t.add_row(str(lat.n), _ms(lat.median_ms), f"{_ms(lat.ci95_low_ms)}–{_ms(lat.ci95_high_ms)}", _ms(lat.p90_ms),
              _ms(lat.p99_ms), _ms(lat.mean_ms), _ms(lat.std_ms), _ms(lat.min_ms), _ms(lat.max_ms), f"{lat.cv:.1%}")
    out.print(t)

    m = record.memory
    t = Table(title="Memory and load", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_column()
    for name, value in (("planned_bytes", m.planned_bytes), ("peak_rss_bytes", m.peak_rss_bytes),
                        ("pte_bytes", m.pte_bytes), ("bundle_bytes", m.bundle_bytes), ("load_ms", m.load_ms)):
        if value is not None:
            t.add_row(name, fmt_value(name, value), m.sources.get(name, ""))
    out.print(t)

    if record.operators is not None:
        ops = record.operators
        cov = f", {ops.coverage:.0%} of the measured execute time" if ops.coverage is not None else ""
        t = Table(title=f"Operators (top {top})", title_justify="left")
        for col, just in (("operator", "left"), ("delegated", "left"), ("backend", "left"), ("count", "right"),
                          ("median ms", "right"), ("share", "right")):
            t.add_column(col, justify=just)
        for o in ops.top(top):
            t.add_row(escape(cap_name(o.name)), "yes" if o.delegated else "no", o.backend or "-", str(o.count),
                      _ms(o.median_ms), fmt_value("share", o.share))
        out.print(t)
        out.print(f"Operator times add up to {_ms(ops.op_sum_ms)} ms{cov} ({ops.iterations} iterations, "
                  "warm-up excluded).", highlight=False)
        if ops.delegate_ops:
            t = Table(title=f"Inside delegate calls: the backend's own events (top {top})", title_justify="left")
            for col, just in (("backend op", "left"), ("backend", "left"), ("count", "right"),
                              ("median ms", "right"), ("share", "right")):
                t.add_column(col, justify=just)
            for o in ops.delegate_ops[:top]:
                t.add_row(escape(cap_name(o.name)), o.backend or "-", str(o.count), _ms(o.median_ms),
                          fmt_value("share", o.share))
            out.print(t)

    if record.accuracy is not None and record.accuracy.outputs:
        t = Table(title=f"Accuracy vs {record.accuracy.reference} ({record.accuracy.source})", title_justify="left")
        for col in ("output", "SNR dB", "max abs", "cosine", "top-1 agreement"):
            t.add_column(col)
        for o in record.accuracy.outputs:
            t.add_row(escape(o.name or str(o.index)), "exact" if o.exact else f"{o.snr_db:.1f}", f"{o.max_abs:.3g}",
                      f"{o.cosine:.6f}", "-" if o.top1_agreement is None else f"{o.top1_agreement:.1%}")
        out.print(t)
    if record.accuracy is not None and record.accuracy.passed is not None:
        verdict = "[green]within[/]" if record.accuracy.passed else "[red]outside[/]"
        out.print(f"Accuracy thresholds of the artifact: {verdict}"
                  + "".join(f"\n  {escape(f)}" for f in record.accuracy.failures), highlight=False)
    if record.accuracy is not None and record.accuracy.task_accuracy is not None:
        out.print(f"Task accuracy ({record.accuracy.source}, from outputs run on the device): "
                  f"{record.accuracy.task_accuracy:.2%} of {record.accuracy.task_samples} held-out samples")
    llm = record.llm
    if llm is not None and llm.perplexity is not None:
        text = (llm.request or {}).get("text") or "the export's held-out text"
        eager = f"; eager fp32 at export {llm.eager_perplexity:.3f}" if llm.eager_perplexity else ""
        out.print(f"Perplexity on the device ({llm.test}): {llm.perplexity:.3f} over {llm.perplexity_tokens} tokens "
                  f"of {escape(str(text))} in windows of {llm.perplexity_window}{eager}", highlight=False)
    for w in record.warnings:
        out.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    p = record.provenance
    out.print(f"[dim]edgerun {p.edgerun_version} (git {p.git_commit}) · runner {p.runner_version} · "
              f"ExecuTorch {p.executorch_version} · recipe {record.model.recipe_hash}[/]", highlight=False)


def print_runs_table(records, *, title: str = "Runs") -> None:
    """One comparison table of several runs (bench's closing table): the columns that vary, plus latency."""
    from edgerun.report import fmt_value, varying_columns
    from edgerun.runtime.columns import IDENTITY, SUMMARY
    from edgerun.runtime.record import flat_row

    rows = [flat_row(r) for r in records]
    varying, common = varying_columns(rows)
    ident = [c.name for c in IDENTITY if c.name != "run_id"]
    identity = [c for c in ident if c in varying]
    metrics = [c.name for c in SUMMARY if any(row[c.name] is not None for row in rows)]
    columns = ["run_id", *identity, *metrics]
    common = {k: v for k, v in common.items() if k in ident}
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for c in columns:
        t.add_column(c, justify="right" if isinstance(rows[0][c], (int, float)) else "left", no_wrap=True)
    for row in rows:
        t.add_row(*(escape(fmt_value(c, row[c])) for c in columns))
    out.print(t)
    if common:
        out.print("[dim]Common to all: " + escape(", ".join(f"{k}={fmt_value(k, v)}" for k, v in common.items()))
                  + "[/]")


def print_comparison(c) -> None:
    from edgerun.report import fmt_change, fmt_value

    colour = {"faster": "green", "slower": "red", "conditions differ": "yellow"}.get(c.verdict, "cyan")
    lat = c.latency
    caveat = "" if c.reliable else " [yellow](unreliable: see warnings)[/]"
    out.print(f"[bold]{c.run_b}[/] vs [bold]{c.run_a}[/]: [bold {colour}]{c.verdict}[/]{caveat}  "
              f"(median {_ms(lat.median_a_ms)} → {_ms(lat.median_b_ms)} ms, {lat.delta_rel:+.1%}; "
              f"Mann–Whitney p = {lat.p_value:.3g}, α = {lat.alpha}; needs |Δ| > {lat.min_effect:.0%})",
              highlight=False)
    t = Table(title_justify="left")
    for col, just in (("metric", "left"), ("A", "right"), ("B", "right"), ("change", "right")):
        t.add_column(col, justify=just)
    for m in c.metrics:
        if m.a is None and m.b is None:
            continue
        t.add_row(m.metric, fmt_value(m.metric, m.a), fmt_value(m.metric, m.b), fmt_change(m))
    out.print(t)
    if c.accuracy_regressions:
        out.print(f"[bold red]{len(c.accuracy_regressions)} accuracy regression(s)[/] (see the warnings)",
                  highlight=False)
    if c.operators:
        t = Table(title="Operators (median ms)", title_justify="left")
        for col, just in (("operator", "left"), ("A", "right"), ("B", "right"), ("change", "right")):
            t.add_column(col, justify=just)
        for m in c.operators[:10]:
            t.add_row(escape(cap_name(m.metric)), _ms(m.a), _ms(m.b), fmt_change(m))
        out.print(t)
    for w in c.warnings:
        out.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)


def register(app: typer.Typer) -> None:
    runs = typer.Typer(help="Runs in the results store.", no_args_is_help=True)
    app.add_typer(runs, name="runs")

    @runs.command("list")
    def runs_list(
        model: Annotated[Optional[str], typer.Option(help="Only runs of this model.")] = None,
        device: Annotated[Optional[str], typer.Option(help="Only runs on this device.")] = None,
        sweep: Annotated[Optional[str], typer.Option(help="Only runs of this bench sweep.")] = None,
        limit: Annotated[int, typer.Option(parser=opt.count(1, 1_000_000),
                                           help="At most this many runs, newest first.")] = 50,
        store: StoreOpt = None,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """List stored runs, newest first."""

        def work() -> dict:
            from edgerun.report import run_kind

            with _open(store) as s:
                rows = s.list(model=model, device=device, sweep_id=sweep, limit=limit)
                for r in rows:  # what the run timed: an LLM's test is indexed; forward or train is in the record
                    if r.get("llm_test"):
                        r["kind"], r["test"] = "llm", r["llm_test"]
                    else:
                        k = run_kind(s.get(r["run_id"]))
                        r["kind"], r["test"] = k.kind, k.test
                return {"store": str(s.path), "runs": rows}

        def human(result: dict) -> None:
            if not result["runs"]:
                out.print(f"No runs in {escape(str(result['store']))} yet (edgerun profile ARTIFACT stores one).",
                          highlight=False)
                return
            t = Table(title=f"Runs in {result['store']}", title_justify="left", box=box.SIMPLE_HEAD)
            t.add_column("run", no_wrap=True)
            t.add_column("when (UTC)", no_wrap=True)
            for col in ("model", "scheme", "test", "device", "source", "threads"):
                t.add_column(col)
            t.add_column("median / p90 / p99 ms", justify="right", no_wrap=True)
            for r in result["runs"]:
                t.add_row(r["run_id"], r["created_at"][:16].replace("T", " "), escape(r["model"]),
                          escape(r["scheme"] or "-"), escape(r.get("test") or "-"),
                          escape(r.get("device_label") or r["device"]), r["source"],
                          str(r["threads"] if r["threads"] is not None else "-"),
                          f"{_ms(r['median_ms'])} / {_ms(r['p90_ms'])} / {_ms(r['p99_ms'])}")
            out.print(t)

        execute(work, json_out=json_out, debug=debug, human=human)

    @runs.command("show")
    def runs_show(
        run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix of it.")],
        top: Annotated[int, typer.Option(parser=opt.top, help="Operators shown.")] = 10,
        store: StoreOpt = None,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Show one run: latency statistics, memory, operators, accuracy, provenance."""
        holder = {}

        def work() -> dict:
            with _open(store) as s:
                holder["record"] = rec = s.get(run_id)
            return record_json(rec, full=True)

        execute(work, json_out=json_out, debug=debug, human=lambda _: print_record(holder["record"], top=top))

    @runs.command("import")
    def runs_import(
        run_dirs: Annotated[list[Path], typer.Argument(help=(
            "Run directories holding a record.json the store could not take (the error named them)."))],
        store: StoreOpt = None,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Store runs whose record was kept in their run directory because the store failed.

        Idempotent: a run already in the store is skipped. Every directory is read first, so one
        without a record imports nothing.
        """

        def work() -> dict:
            from edgerun.store import import_runs

            with _open(store) as s:
                results = import_runs(s, run_dirs)
                return {"store": str(s.path), "runs": results,
                        "imported": sum(r["status"] == "imported" for r in results),
                        "skipped": sum(r["status"] == "skipped" for r in results)}

        def human(result: dict) -> None:
            for r in result["runs"]:
                what = "imported" if r["status"] == "imported" else f"skipped ({r['reason']})"
                out.print(f"{r['run_id']}: {escape(what)}  [dim]{escape(r['run_dir'])}[/]", highlight=False)
            out.print(f"{result['imported']} run(s) imported into {escape(result['store'])}, "
                      f"{result['skipped']} already there.", highlight=False)

        execute(work, json_out=json_out, debug=debug, human=human)

    @app.command("compare")
    def compare_cmd(
        run_a: Annotated[str, typer.Argument(help="Baseline run id (or unique prefix).")],
        run_b: Annotated[str, typer.Argument(help="Candidate run id (or unique prefix).")],
        alpha: Annotated[float, typer.Option(parser=opt.real(0.0, 0.5, lo_open=True),
                                             help="Significance level of the Mann–Whitney U test.")] = 0.01,
        min_effect: Annotated[float, typer.Option(
            parser=opt.real(0.0, 10.0), help="Relative change of the median needed to call it faster/slower (0.05 = 5 %).")] = 0.05,
        store: StoreOpt = None,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Compare run B against baseline A: U test on the raw samples plus a practical-effect threshold.

        Only runs of one kind and test are compared (forward on the same input shapes, one LLM test such
        as tg32 or pp64 or score, or training); anything else is refused, naming both, with exit 2.

        When the machine's load differed between the runs (or was high for either: busy cores, load
        average, CPU steal, recorded by the device probe before each run) the verdict is "conditions
        differ" instead of faster/slower, with the reasons among the warnings.
        """
        holder = {}

        def work() -> dict:
            from edgerun.report import compare_runs

            if not (0 < alpha < 1) or not (0 <= min_effect < 10) or math.isnan(min_effect):
                raise UsageError("--alpha must be in (0, 1) and --min-effect a fraction such as 0.05.")
            with _open(store) as s:
                a, b = s.get(run_a), s.get(run_b)
            holder["c"] = c = compare_runs(a, b, alpha=alpha, min_effect=min_effect)  # machine load too
            return c.to_dict()

        execute(work, json_out=json_out, debug=debug, human=lambda _: print_comparison(holder["c"]))

    @app.command("report")
    def report_cmd(
        run_ids: Annotated[list[str], typer.Argument(help="Run ids (or unique prefixes), in the order to show.")],
        output: Annotated[Optional[Path], typer.Option("--output", "-o", help=(
            "File to write (default: report.html for html; stdout for md/json/csv)."))] = None,
        fmt: Annotated[Optional[str], typer.Option("--format", "-f", help=(
            "html | md | json | csv (default: from the -o suffix, else html)."))] = None,
        compare: Annotated[bool, typer.Option(help=(
            "Also compare each run against the first run of the same model, source (measured or "
            "emulated) and test (forward, an LLM test such as tg32 or pp64 or score, train); runs of "
            "different models or tests are not compared."))] = True,
        top: Annotated[int, typer.Option(parser=opt.top, help="Operators shown per run.")] = 12,
        store: StoreOpt = None,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Write a report of stored runs: HTML with plots, or markdown / JSON / CSV from the same records."""
        from edgerun.report import FORMATS

        suffix_fmt = {".html": "html", ".htm": "html", ".md": "md", ".json": "json", ".csv": "csv"}
        chosen = fmt or (suffix_fmt.get(output.suffix.lower()) if output else None) or "html"
        holder = {}

        def work() -> dict:
            from edgerun.report import compare_comparable, render

            if chosen not in FORMATS:
                raise UsageError(f"unknown report format '{chosen}'.", hint=f"Use one of: {', '.join(FORMATS)}.")
            with _open(store) as s:
                records = [s.get(r) for r in run_ids]
            comparisons = compare_comparable(records) if compare else []
            kw = {"top": top} if chosen == "html" else {}
            text = render(records, chosen, comparisons, **kw)
            path = output if output is not None else (Path("report.html") if chosen == "html" else None)
            if path is not None:
                from edgerun.core.errors import environment_problem

                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text, encoding="utf-8")
                except OSError as exc:  # read-only, full, /proc ...: this machine's problem, not a bug
                    raise environment_problem(exc, f"writing the report {path}", stage="report") from exc
            else:
                holder["text"] = text
            result = {"format": chosen, "path": str(path) if path else None, "runs": [r.run_id for r in records],
                      "verdicts": {c.run_b: c.verdict for c in comparisons},
                      "comparisons": [{"run_a": c.run_a, "run_b": c.run_b, "verdict": c.verdict,
                                       "accuracy_regressions": len(c.accuracy_regressions)} for c in comparisons],
                      "bytes": len(text.encode())}
            if path is None and json_out:  # --json and no file: the report itself goes into the one object
                result["report"] = json.loads(text) if chosen == "json" else text
            return result

        def human(result: dict) -> None:
            if result["path"] is None:
                typer.echo(holder["text"], nl=False)
            else:
                out.print(f"Wrote {result['format']} report of {len(result['runs'])} run(s) to {escape(result['path'])}",
                          highlight=False)

        execute(work, json_out=json_out, debug=debug, human=human)
