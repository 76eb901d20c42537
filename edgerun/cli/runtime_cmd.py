"""``edgerun runtime build | info`` and ``edgerun run`` (local runs; devices come later)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from . import options as opt
from ._common import DebugOpt, JsonOpt, SafeConsole, execute, plain, progress

out = SafeConsole()


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def _show_bundle(b: dict) -> None:
    t = Table(title=f"Runtime bundle {plain(b['path'])}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("arch / variant", f"{plain(b['arch'])} / {plain(b['variant'])}")
    t.add_row("executorch", plain(b["executorch_version"]))
    t.add_row("runner", f"{plain(b['runner_version'])} (sources {plain(str(b['runner_source_hash'])[:12])})")
    t.add_row("start with", plain(" ".join(b.get("start", []))))
    t.add_row("backends", plain(", ".join(b.get("backends", [])) or "none"))
    t.add_row("kernel libraries", plain(", ".join(b.get("kernel_libraries", [])) or "none"))
    ops = b.get("operators")
    by_lib = b.get("operators_by_library") or {}
    t.add_row("operators", (f"{len(ops)} registered" + (" (" + ", ".join(f"{lib}: {len(v)}" for lib, v in
                                                               sorted(by_lib.items())) + ")" if by_lib else ""))
              if ops is not None else "unknown (could not run the runner)")
    t.add_row("system libraries", plain(", ".join(b.get("system_libraries", [])) or "none (uses the system's)"))
    t.add_row("size", f"{_mb(b.get('total_bytes'))} on disk, {_mb(b.get('tarball_bytes'))} as tar.gz")
    if "intact" in b:
        t.add_row("files", "[green]intact[/]" if b["intact"] else "[red]" + plain("; ".join(b["problems"])) + "[/]")
    out.print(t)


def _show_run(r: dict) -> None:
    from edgerun.runtime.stats import summarize

    runner = r["runner"]
    h, load, s = runner["header"] or {}, runner["load"] or {}, runner["summary"] or {}
    samples = runner["execute_ns"]
    t = Table(title=f"{plain(r['artifact'])} on this machine", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("runner", plain(f"{h.get('runner_version')} · executorch {h.get('executorch_version')} · {h.get('arch')}"
                              f" · {h.get('threads')} thread(s)" + (f" · under {' '.join(r['emulator'])} (emulated)"
                                                                   if r.get("emulator") else "")))
    t.add_row("load", f"{load.get('load_ns', 0) / 1e6:.2f} ms")
    if samples:
        st = summarize(samples)
        t.add_row("execute", f"median {st.median_ms:.3f} ms · p90 {st.p90_ms:.3f} ms · {st.n} iterations"
                             + (f" [yellow]({plain('; '.join(st.warnings))})[/]" if st.unstable else ""))
    t.add_row("peak RSS", f"{plain(s.get('peak_rss_kb'))} kB")
    for o in s.get("outputs", []):
        t.add_row(f"output {plain(o['index'])}", plain(f"{o.get('dtype')}{o.get('shape')} {o.get('path') or ''}"))
    if s.get("etdump"):
        t.add_row("ETDump", plain(f"{s['etdump']['path']} ({s['etdump']['bytes']} bytes)"))
    for w in r["preflight"]["warnings"]:
        t.add_row("warning", f"[yellow]{plain(w)}[/]")
    out.print(t)


def register(app: typer.Typer) -> None:
    runtime_app = typer.Typer(help="Build and inspect native runner bundles.", no_args_is_help=True)
    app.add_typer(runtime_app, name="runtime")

    @runtime_app.command("build")
    def build_cmd(
        arch: Annotated[str, typer.Option("--arch", help="host | aarch64")] = "host",
        variant: Annotated[str, typer.Option("--variant", help="full | slim (no optimized kernels: "
                                                               "fully delegated programs only)")] = "full",
        jobs: Annotated[int, typer.Option("--jobs", "-j", parser=opt.count(1, 256),
                                          help="Parallel compile jobs.")] = 2,
        force: Annotated[bool, typer.Option("--force", help="Rebuild even if a cached bundle matches.")] = False,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Build edgerun-runner and bundle it with the ExecuTorch libraries it needs.

        Cached by arch, variant, executorch version and runner source hash; --json prints an
        object whose `path` is the bundle directory (`tarball` the .tar.gz beside it).
        """

        def work() -> dict:
            from edgerun.core.errors import UsageError
            from edgerun.runtime.build import BuildRequest, build_bundle

            try:
                req = BuildRequest(arch=arch, variant=variant, jobs=jobs, force=force)
            except ValueError as exc:
                raise UsageError(str(exc), hint="--arch host|aarch64, --variant full|slim.") from None
            return build_bundle(req).to_json()

        execute(work, json_out=json_out, debug=debug, human=_show_bundle)

    @runtime_app.command("info")
    def info_cmd(
        bundle: Annotated[Path, typer.Argument(help="A bundle directory (from `edgerun runtime build`).")],
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Describe a bundle and check its files against bundle.json."""

        def work() -> dict:
            from edgerun.runtime.bundle import load_bundle, verify_bundle

            b = load_bundle(bundle)
            problems = verify_bundle(b)
            return {**b.to_json(), "intact": not problems, "problems": problems}

        execute(work, json_out=json_out, debug=debug, human=_show_bundle)

    @app.command("run")
    def run_cmd(
        artifact: Annotated[Path, typer.Argument(help="An artifact directory (from `edgerun export`).")],
        bundle: Annotated[Optional[Path], typer.Option("--bundle", "-b", help=(
            "Runtime bundle directory: run on this machine with it."))] = None,
        device: Annotated[Optional[str], typer.Option("--device", "-d", help=(
            "Run on these devices instead (inventory names or URIs, comma-separated; concurrently). The bundle "
            "is chosen by each device's arch and results land in a run directory under EDGERUN_HOME/runs."))] = None,
        all_devices: Annotated[bool, typer.Option("--all", help="Run on every device of the inventory.")] = False,
        inventory: Annotated[Optional[str], typer.Option("--inventory", envvar="EDGERUN_DEVICES",
                                                         help="Device inventory TOML.")] = None,
        timeout: Annotated[float, typer.Option(parser=opt.timeout, help="Seconds allowed for a run on a device.")] = 600,
        warmup: Annotated[int, typer.Option(parser=opt.warmup, help="Untimed warm-up iterations.")] = 1,
        iterations: Annotated[int, typer.Option("--iterations", "-n", parser=opt.iterations,
                                                help="Timed iterations.")] = 10,
        min_time_ms: Annotated[int, typer.Option(parser=opt.min_time_ms,
                                                 help="Keep iterating until this much timed time.")] = 0,
        threads: Annotated[int, typer.Option(parser=opt.threads,
                                             help="Thread pool size (0: the runtime's default).")] = 0,
        vector: Annotated[Optional[int], typer.Option(parser=opt.vector,
                                                      help="Which test vector's inputs to feed.")] = 0,
        fill: Annotated[Optional[str], typer.Option(parser=opt.choice(("zeros", "ones", "random")),
                                                    help="Generate inputs instead: zeros | ones | random.")] = None,
        etdump: Annotated[bool, typer.Option("--etdump", help="Record an ETDump of the timed iterations.")] = False,
        outputs: Annotated[Optional[Path], typer.Option("--outputs", help="Write outputs (.npy) here.")] = None,
        no_preflight: Annotated[bool, typer.Option("--no-preflight",
                                                   help="Run even if pre-flight finds a problem.")] = False,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Run an artifact with the native runner: here with --bundle, or on --device(s) (run directories kept)."""

        def work() -> dict:
            from edgerun.core.errors import UsageError
            from edgerun.runtime.runner import RunOptions, run_artifact_local

            try:
                opts = RunOptions(warmup=warmup, iterations=iterations, min_time_ms=min_time_ms,
                                  threads=threads,
                                  fill=fill or "random")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            if not timeout > 0:  # before any directory is made or any device touched
                raise UsageError(f"--timeout must be a number of seconds > 0, got {timeout:g}.")
            if device or all_devices:
                if bundle is not None:
                    raise UsageError("give --bundle (a run on this machine) or --device, not both.")
                return _run_on_devices(artifact, device, all_devices, inventory, opts,
                                       vector=None if fill else vector, etdump=etdump, timeout=timeout)
            if bundle is None:
                raise UsageError("nothing to run on.", hint="Give --bundle B (this machine, e.g. from `edgerun "
                                                            "runtime build`) or --device D (see `edgerun devices list`).")
            with progress(f"running {artifact} with {bundle}"):
                return run_artifact_local(artifact, bundle, vector=None if fill else vector, options=opts,
                                          etdump=etdump, outputs_dir=outputs, preflight=not no_preflight,
                                          timeout=timeout)

        execute(work, json_out=json_out, debug=debug,
                human=lambda r: _show_device_runs(r) if "runs" in r else _show_run(r))


def _run_on_devices(artifact, device, all_devices, inventory, opts, *, vector, etdump, timeout) -> dict:
    from edgerun.cli.profile_cmd import _device_list
    from edgerun.devices.inventory import resolve_device
    from edgerun.core.artifact import read_manifest
    from edgerun.runtime.deploy import DeviceRunError, check_run_request, run_many

    artifact = read_manifest(artifact)  # a bad artifact fails once, before any device is opened
    artifact.verified_pte()
    artifact.verified_data()
    check_run_request(artifact, vector=vector, timeout=timeout)  # wrong options fail before any work
    names = _device_list(device, all_devices, inventory)
    devices = []
    try:
        for name in names:
            devices.append(resolve_device(name, inventory))
        with progress(f"running on {', '.join(names)}"):
            results = run_many(artifact, devices, options=opts, vector=vector, etdump=etdump, timeout=timeout)
    finally:
        for d in devices:
            d.close()
    runs = [r.to_json() for r in results if not isinstance(r, DeviceRunError)]
    failures = [r.to_json() for r in results if isinstance(r, DeviceRunError)]
    out: dict = {"artifact": str(artifact.path), "runs": runs, "failures": failures}
    if failures:
        out.update(ok=False, exit_code=max(f.get("exit_code", 1) for f in failures))
    return out


def _show_device_runs(r: dict) -> None:
    con = SafeConsole()
    for run in r["runs"]:
        ns = run["runner"].get("execute_ns") or []
        med = sorted(ns)[len(ns) // 2] / 1e6 if ns else float("nan")
        con.print(f"[bold]{plain(run['device'])}[/] ({plain(run['device_info'].get('arch'))}"
                  f"{', emulated' if run['device_info'].get('emulated') else ''}): {len(ns)} timed iteration(s), "
                  f"median execute {med:.3f} ms -> {plain(run['run_dir'])}", highlight=False)
    for f in r["failures"]:
        con.print(f"[bold red]failed[/] on {plain(f.get('device'))}: {plain(f['message'])}", highlight=False,
                  soft_wrap=True)
