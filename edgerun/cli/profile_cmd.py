"""``edgerun deploy``, ``edgerun profile``, ``edgerun bench`` — the hall wiring the rooms."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgerun.core.errors import ExitCode, UsageError

from . import options as opt
from ._common import DebugOpt, JsonOpt, SafeConsole, err_console, execute, plain, progress
from .results_cmd import StoreOpt, print_record, print_runs_table, record_json

out = SafeConsole()

DeviceOpt = Annotated[str, typer.Option(
    "--device", "-d", help="Inventory name or device URI (local://, qemu-aarch64://?cpu=cortex-a76, ssh://user@host, "
                           "adb://SERIAL, serial:///dev/ttyUSB0, estimate://ethos-u55-128?clock=500e6, "
                           "labgrid://PLACE); several comma-separated "
                           "run concurrently.")]
WaitOpt = Annotated[Optional[float], typer.Option(
    "--wait", parser=opt.real(0.0, 604800.0), help="labgrid:// places: wait up to SECONDS for a busy place (default: "
                                                   "fail at once, naming who holds it).")]
InventoryOpt = Annotated[Optional[str], typer.Option(
    "--inventory", envvar="EDGERUN_DEVICES", help="Device inventory TOML (default: EDGERUN_HOME/devices.toml).")]


def _lab_wait(wait: float | None) -> None:
    if wait is not None:
        from edgerun.devices.labgrid import set_default_wait

        set_default_wait(wait)


def _device_list(device: str | None, all_devices: bool, inventory: str | None) -> list[str]:
    """--device a,b / --all, one meaning for every command (edgerun.devices.parse_device_list): each
    device checked before any work and kept once; returned as names/URIs that resolve to it."""
    from edgerun.devices import parse_device_list

    return [spec.ref for spec in parse_device_list(device, all_devices=all_devices, inventory=inventory)]


def print_fit(f: dict) -> None:
    """A memory fit (estimate:// of a target with no cycle model): arena and flash against the board's, no time."""
    fit = f["fit"]

    def part(k: str) -> str:
        text = f"{k.upper()} needed {fit[f'{k}_needed_bytes']:,} B"
        if f"{k}_bytes" in fit:
            text += (f" of {fit[f'{k}_bytes']:,} B: " + ("fits" if fit[f"{k}_fits"] else "DOES NOT FIT")
                     + f" (headroom {fit[f'{k}_headroom_bytes']:,} B)")
        return text

    verdict = {True: "fits", False: "does not fit", None: "no board size given"}[f["fits"]]
    out.print(f"[bold]{plain(f['model'])}[/] {plain(f['target'])}/{plain(f['scheme'])} on {plain(f['device'])}: "
              f"memory fit, {verdict}; {part('sram')} (the tensor arena: planned memory); {part('flash')} (the .pte); "
              "no timing, not stored", soft_wrap=True, highlight=False)
    for w in f["warnings"]:
        err_console.print(f"[yellow]warning:[/] {plain(w)}", soft_wrap=True, highlight=False)


def _settings(**kw):
    from edgerun.profiling import ProfileSettings

    try:
        return ProfileSettings(**kw)
    except ValueError as exc:
        raise UsageError(str(exc) + ".") from None


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy_cmd(
        artifact: Annotated[Path, typer.Argument(help="Artifact directory written by `edgerun export`.")],
        device: DeviceOpt,
        variant: Annotated[str, typer.Option(help="Runner bundle variant: full | slim.")] = "full",
        inventory: InventoryOpt = None,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Push the runner bundle (chosen by the device's probed arch), the program and its test vectors.

        Files already on the device (same sha256) are not sent again.
        """

        def work() -> dict:
            from edgerun.devices.inventory import resolve_device
            from edgerun.runtime.deploy import deploy

            results = []
            for name in _device_list(device, False, inventory):
                with progress(f"deploying to {name}"), resolve_device(name, inventory) as dev:
                    results.append(deploy(artifact, dev, variant=variant).to_json())
            return {"deployments": results}

        def human(r: dict) -> None:
            for d in r["deployments"]:
                out.print(f"[bold]{plain(d['device'])}[/] ({plain(d['arch'])}): program at {plain(d['program'])}, "
                          f"bundle at {plain(d['bundle_dir'])}; sent {len(d['pushed'])} file(s), "
                          f"{len(d['skipped'])} already there", highlight=False)
                for w in d["preflight"]["warnings"]:
                    out.print(f"  [yellow]warning:[/] {plain(w)}", highlight=False)

        execute(work, json_out=json_out, debug=debug, human=human)

    @app.command("profile")
    def profile_cmd(
        artifact: Annotated[Path, typer.Argument(help="Artifact directory written by `edgerun export`.")],
        device: DeviceOpt = "local://",
        all_devices: Annotated[bool, typer.Option("--all", help="Every device in the inventory.")] = False,
        warmup: Annotated[int, typer.Option(parser=opt.warmup, help="Untimed warm-up iterations.")] = 3,
        iterations: Annotated[int, typer.Option(parser=opt.iterations,
                                                help="Timed iterations (every sample is kept).")] = 30,
        min_time_ms: Annotated[int, typer.Option(parser=opt.min_time_ms,
                                                 help="Keep iterating until the timed ones add up to this.")] = 0,
        threads: Annotated[str, typer.Option(parser=opt.threads_list(),
                                             help="Thread counts to sweep, e.g. 1,2,4; auto (default): the runner "
                                                  "times 1 thread and every core and keeps the faster; 0: every core.")] = "auto",
        vector: Annotated[int, typer.Option(parser=opt.vector, help="Test vector whose inputs are run (its eager "
                                                                    "outputs are the accuracy reference).")] = 0,
        etdump: Annotated[bool, typer.Option(help="Record an ETDump for the per-operator table.")] = True,
        task_accuracy: Annotated[Optional[bool], typer.Option(
            "--task-accuracy/--no-task-accuracy",
            help="Run the artifact's held-out split on the device (one more, untimed runner invocation) and "
                 "report task accuracy from those outputs. Default: on when the artifact has a dataset.")] = None,
        timeout: Annotated[float, typer.Option(parser=opt.timeout, help="Seconds allowed for one run on a device.")] = 900,
        text: Annotated[Optional[Path], typer.Option(
            "--text", help="LLM artifacts: score this UTF-8 text file on the device (its perplexity, stored) "
                           "instead of the held-out text edgerun ships.")] = None,
        store: StoreOpt = None,
        inventory: InventoryOpt = None,
        wait: WaitOpt = None,
        top: Annotated[int, typer.Option(parser=opt.top, help="Operators shown.")] = 10,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Deploy, run and analyse ARTIFACT on one or more devices; store every run.

        Latency statistics over every raw sample (median, p90/p99, bootstrap CI, instability
        warnings), per-operator times from the ETDump, memory, accuracy of the device's outputs
        against eager PyTorch, and for an artifact with a dataset the task accuracy of its held-out
        split computed from outputs run on the device. Numbers from emulators are labelled emulated.
        """
        holder: dict = {}

        def work() -> dict:
            from edgerun.cells import CellFailure
            from edgerun.profiling import parse_threads, profile
            from edgerun.store import Store

            settings = _settings(warmup=warmup, iterations=iterations, min_time_ms=min_time_ms,
                                 threads=parse_threads(threads), vector=vector, etdump=etdump, timeout_s=timeout,
                                 task_accuracy=task_accuracy, text=text)
            _lab_wait(wait)
            names = _device_list(None if all_devices else device, all_devices, inventory)  # --all: no default
            with Store(store) as s:  # open once here: a store from a newer schema fails before any run
                store_path = s.path
            speed: list[str] = []
            with progress("profiling") as status:
                results = profile(artifact, names, settings, store_path=store_path, inventory=inventory,
                                  on_progress=status.update, on_warning=speed.append)
            from edgerun.runtime.record import RunRecord

            records = [r for r in results if isinstance(r, RunRecord)]
            failures = [r.to_json() for r in results if isinstance(r, CellFailure)]
            # estimate:// of a target with no cycle model (a Cortex-M): memory and fit, no time, not stored
            fits = [r.to_json() for r in results if not isinstance(r, (RunRecord, CellFailure))]
            holder["records"], holder["failures"], holder["fits"] = records, failures, fits
            holder["speed"] = speed
            result: dict = {"runs": [record_json(r) for r in records], "failures": failures,
                            "scheme_warnings": speed, "fits": fits}
            if len(records) == 1:
                result.update(record_json(records[0]))
            if failures:
                result["ok"] = False
                result["exit_code"] = max(f["error"].get("exit_code", 1) for f in failures)
            return result

        def human(_: dict) -> None:
            for rec in holder["records"]:
                print_record(rec, top=top)
            if len(holder["records"]) > 1:
                print_runs_table(holder["records"], title="Runs of this profile")
            for f in holder["fits"]:
                print_fit(f)
            for f in holder["failures"]:
                err_console.print(f"[bold red]failed[/] on {plain(f['device'])}: {plain(f['error']['message'])}",
                                  soft_wrap=True, highlight=False)
            for w in holder["speed"]:
                err_console.print(f"[yellow]warning:[/] {plain(w)}", soft_wrap=True, highlight=False)

        execute(work, json_out=json_out, debug=debug, human=human)

    @app.command("bench")
    def bench_cmd(
        model: Annotated[str, typer.Argument(help="Zoo model or 'package.module:factory'.")],
        targets: Annotated[str, typer.Option(help="Comma-separated targets.")] = "host",
        schemes: Annotated[Optional[str], typer.Option(help="Comma-separated recipes: a scheme with options if wanted (fp32,8da4w:group_size=64), or steps joined by + (README: Recipes). Default: fp32,int8.")] = None,
        recipes: Annotated[Optional[str], typer.Option(
            "--recipes", help="Recipes separated by ';' (commas may appear inside parentheses), steps joined by +: "
                              "\"8da4w; prune-channels(0.25)+int8; lowrank(0.5)+8da4w; sparsify(0.5)+int8\". "
                              "Instead of --schemes.")] = None,
        target_size: Annotated[Optional[float], typer.Option(
            "--target-size", parser=opt.real(0.0, 1000.0, lo_open=True),
            help="Recommend, per device, the fastest (then most accurate) cell whose .pte is at most this fraction "
                 "of the sweep's fp32 (else largest) cell of the same model, e.g. 0.6, and whose quality is "
                 "within --max-quality-loss of that cell's.")] = None,
        max_quality_loss: Annotated[Optional[float], typer.Option(
            "--max-quality-loss", parser=opt.real(0.0, 1000.0, what="--max-quality-loss"),
            help="With --target-size: how much quality a recommended cell may lose against the fp32 (else "
                 "largest) cell of the same model; cells over it (or with no quality measured) are not "
                 "recommended. One number, read per measure: for task accuracy the absolute drop as a "
                 "fraction (0.02 = 2 points, the default), for an LLM the relative rise of perplexity on "
                 "the device (0.15 = 15 %, the default). Models measured only by SNR against eager get no "
                 "budget.")] = None,
        devices: Annotated[str, typer.Option(help="Comma-separated device names or URIs.")] = "local://",
        warmup: Annotated[int, typer.Option(parser=opt.warmup, help="Untimed warm-up iterations per run.")] = 3,
        iterations: Annotated[int, typer.Option(parser=opt.iterations, help="Timed iterations per run.")] = 30,
        threads: Annotated[str, typer.Option(parser=opt.threads_list(),
                                             help="Thread counts to sweep, e.g. 1,2,4, or auto (default: the runner "
                                                  "keeps the faster of 1 thread and every core).")] = "auto",
        sweep_id: Annotated[Optional[str], typer.Option(
            help="Resume this sweep (default: derived from the arguments, so re-running resumes).")] = None,
        executor: Annotated[str, typer.Option(
            "--executor", help="Where the exports run: local (this process, one at a time), ray (a local Ray "
                               "instance started for the run; ray?num_cpus=N) or ray://HOST:PORT (an existing "
                               "Ray cluster sharing EDGERUN_HOME). Measurements always run here.")] = "local",
        report: Annotated[Optional[Path], typer.Option("--report", "-o", help="HTML report to write.")] = None,
        store: StoreOpt = None,
        inventory: InventoryOpt = None,
        wait: WaitOpt = None,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Sweep export -> deploy -> profile over targets x schemes x devices; store every run.

        Ends with one table of every run of the sweep (latency, size, accuracy per cell) and an HTML
        report with a Pareto plot of latency x size x accuracy. It prints no faster/slower verdicts:
        compare two runs of it with `edgerun compare RUN_A RUN_B`. Every finished cell is stored as it
        finishes; re-running resumes.
        """
        holder: dict = {}

        def work() -> dict:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            if max_quality_loss is not None and target_size is None:
                raise UsageError("--max-quality-loss is a budget of what --target-size recommends, so it needs "
                                 "--target-size.", hint="Add --target-size 0.6 (say), or drop --max-quality-loss.")

            from edgerun.profiling import bench, parse_threads
            from edgerun.report import render
            from edgerun.store import Store

            from edgerun.export.recipes import split_recipes, split_top_level

            split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
            if schemes is not None and recipes is not None:
                raise UsageError("give --recipes or --schemes, not both.",
                                 hint="--recipes \"A; B\" separates recipes with ';', --schemes A,B with commas.")
            settings = _settings(warmup=warmup, iterations=iterations, threads=parse_threads(threads))
            from edgerun.executors import parse_executor

            runner = parse_executor(executor)  # a wrong form, or Ray missing: fails before any work
            sl = (split_recipes(recipes) if recipes is not None
                  else [x.strip() for x in split_top_level(schemes or "fp32,int8", ",") if x.strip()])
            _lab_wait(wait)
            tl, dl = split(targets), _device_list(devices, False, inventory)
            total = len(tl) * len(sl) * len(dl) * len(settings.threads)
            if err_console.is_terminal:
                bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), console=err_console, transient=False)
            else:  # piped: a bar shows nothing; plain lines on stderr say where the sweep is
                bar = None
            with Store(store) as s, (bar or progress(f"bench: {total} cell(s)")) as lines:
                task = bar.add_task("bench", total=total) if bar else None
                finished = [0]

                def on_cell(key: str, what: str) -> None:
                    finished[0] += 1
                    if bar:
                        bar.advance(task)
                        bar.console.print(f"{plain(key)}: {plain(what)}", highlight=False)
                    else:
                        lines.update(f"[{finished[0]}/{total}] {key}: {what}")

                def on_progress(m: str) -> None:
                    if bar:
                        bar.update(task, description=plain(m[:60]))
                    else:
                        lines.update(m)

                summary = bench(model, tl, sl, dl, settings, store=s, inventory=inventory, sweep_id=sweep_id,
                                on_cell=on_cell, on_progress=on_progress, executor=runner)
                records = [s.get(r) for r in summary["run_ids"]]
            from edgerun.profiling import scheme_speed_warnings

            summary["scheme_warnings"] = scheme_speed_warnings(records)
            holder["records"] = records
            if target_size is not None:
                from edgerun.report import recommend

                summary["recommendation"] = recommend(records, target_size, max_quality_loss)
            if records:
                path = report or Path(f"bench-{summary['sweep_id']}.html")
                path.write_text(render(records, "html", title=f"edgerun bench: {model}", pareto=True), encoding="utf-8")
                summary["report"] = str(path)
            summary["runs"] = [record_json(r) for r in records]
            if summary["failures"]:
                summary["ok"] = False
                summary["exit_code"] = int(ExitCode.DEVICE_RUN)  # a sweep with failed cells
            return summary

        def human(r: dict) -> None:
            if holder["records"]:
                print_runs_table(holder["records"], title=f"bench {model} ({r['sweep_id']})")
            if r.get("report"):
                out.print(f"Report with the Pareto plot (latency x size x accuracy): {plain(r['report'])}",
                          highlight=False)
            if "recommendation" in r:
                from edgerun.report import recommendation_text

                out.print(f"[bold]Recommended under --target-size {target_size:g}[/] (per device):", highlight=False)
                for item in r["recommendation"] or ():
                    out.print(f"  {plain(recommendation_text(item))}", highlight=False, soft_wrap=True)
                if not r["recommendation"]:
                    out.print("  no inference run was stored, so nothing to recommend", highlight=False)
            for sk in r.get("skipped") or ():
                out.print(f"skipped {plain(sk['cell'])}: {plain(sk['reason'])}", soft_wrap=True, highlight=False)
            for f in r.get("fits") or ():
                print_fit(f)
            for f in r["failures"]:
                err_console.print(f"[bold red]failed[/] {plain(f['cell'])}: {plain(f['error']['message'])}",
                                  soft_wrap=True, highlight=False)
            for w in r["scheme_warnings"]:
                err_console.print(f"[yellow]warning:[/] {plain(w)}", soft_wrap=True, highlight=False)

        execute(work, json_out=json_out, debug=debug, human=human)
