"""The export for an Arm target, run inside the Arm toolchain environment.

edgerun's own venv cannot import ExecuTorch's Arm backend (:mod:`.toolchain` says why), so
:func:`edgerun.export.pipeline.export_model` checks the call there (target, recipe, thresholds: a wrong
call is refused before any work) and hands the export to :func:`export_in_toolchain`, which runs
``python -m edgerun.export.arm.worker REQUEST.json`` with the toolchain's interpreter. The child runs the
same pipeline; its stage starts/ends and warnings come back as marked lines on stderr (forwarded to the
caller's callbacks), its result or error as a JSON file. The error is raised here as the same class with
the same exit code. Models cross the process boundary by name only: a zoo name or ``package.module:factory``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgerun.core import errors as _errors

MARK = "\x1eedgerun-worker "


def inside() -> bool:
    from . import toolchain

    return toolchain.active()


def export_in_toolchain(model, target, chain, out: Path, *, options, thresholds, progress, started):
    from edgerun.core.artifact import read_manifest
    from edgerun.core.errors import ExportError, UsageError

    from . import toolchain

    if not isinstance(model, str):
        raise UsageError(f"target {target.name!r} exports in the Arm toolchain environment (another process), so "
                         f"the model must be given by name, not as a Python object ({type(model).__name__}).",
                         hint="Pass a zoo name or `package.module:factory` whose factory() returns "
                              "(model, example_inputs).")
    python = toolchain.require()
    with tempfile.TemporaryDirectory(prefix="edgerun-arm-") as td:
        request = Path(td) / "request.json"
        result = Path(td) / "result.json"
        request.write_text(json.dumps({
            "model": model, "target": target.name, "scheme": chain.spec, "out": str(Path(out).absolute()),
            "options": dataclasses.asdict(options), "thresholds": thresholds, "result": str(result),
            "sys_path": [p for p in sys.path if p and Path(p).is_dir()], "cwd": os.getcwd()}))
        proc = subprocess.Popen([str(python), "-m", "edgerun.export.arm.worker", str(request)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        tail: list[str] = []
        for line in proc.stderr:
            if line.startswith(MARK):
                try:
                    kind, *args = json.loads(line[len(MARK):])
                except ValueError:
                    continue
                if args and args[0] == "resolve":   # this process resolved the call already; that one started it
                    args[0] = "start the Arm toolchain"
                if kind == "stage" and progress.on_stage:
                    progress.on_stage(str(args[0]))
                elif kind == "done":
                    progress.times[str(args[0])] = round(float(args[1]), 3)
                    if progress.on_stage_done:
                        progress.on_stage_done(str(args[0]), float(args[1]))
                elif kind == "warn":
                    progress.warn(str(args[0]))
            else:
                tail = (tail + [line.rstrip("\n")])[-40:]
        code = proc.wait()
        try:
            res = json.loads(result.read_text())
        except (OSError, ValueError):
            res = None
    if res is None or (code != 0 and "error" not in res):
        raise ExportError(f"the export in the Arm toolchain environment ({python}) ended with exit {code} and no "
                          f"result; its last output: {' | '.join(tail[-8:])[-1500:]}", stage="toolchain",
                          hint="Run again with --debug; `edgerun toolchain arm --force` rebuilds the environment.")
    if "error" in res:
        err = res["error"]
        cls = getattr(_errors, err.get("type", ""), None)
        if not (isinstance(cls, type) and issubclass(cls, _errors.EdgerunError)):
            cls = ExportError
        exc = cls(err.get("message", "export failed"), stage=err.get("stage"), hint=err.get("hint"))
        raise exc
    return read_manifest(out)


def _main(request_path: str) -> int:
    req = json.loads(Path(request_path).read_text())
    for p in reversed(req.get("sys_path") or []):
        if p not in sys.path:
            sys.path.insert(0, p)
    os.chdir(req["cwd"])

    def emit(*event) -> None:
        sys.stderr.write(MARK + json.dumps(list(event)) + "\n")
        sys.stderr.flush()

    out: dict
    try:
        from edgerun.export import ExportOptions
        from edgerun.export.pipeline import export_model

        m = export_model(req["model"], req["target"], req["scheme"], req["out"],
                         options=ExportOptions(**req["options"]), thresholds=req.get("thresholds"),
                         on_stage=lambda n: emit("stage", n), on_stage_done=lambda n, s: emit("done", n, s),
                         on_warning=lambda t: emit("warn", t))
        out = {"ok": True, "manifest": str(m.path)}
        code = 0
    except _errors.EdgerunError as exc:
        out = {"error": {"type": type(exc).__name__ if hasattr(_errors, type(exc).__name__) else
                         next(c.__name__ for c in type(exc).__mro__ if hasattr(_errors, c.__name__)),
                         "message": exc.message, "stage": exc.stage, "hint": exc.hint}}
        code = int(exc.exit_code)
    Path(req["result"]).write_text(json.dumps(out))
    return code


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
