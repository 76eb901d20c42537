"""Pre-flight: will this bundle run this program? Answered before anything reaches a device.

Compares the artifact's manifest (operators the program calls outside delegates, delegate
backends, the executorch version that wrote it, its target architecture, its verification status)
with the bundle's ``bundle.json`` (operators and backends the runner itself registered, its
executorch version and architecture). Problems refuse the run with a message that names what is
missing; warnings are reported but do not stop it.

The bundle's operator list comes from the runner (``edgerun-runner --list-kernels``: ExecuTorch's
kernel registry after every kernel library of the bundle registered), so "present" here means
"registered in exactly the binary that will run".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgerun.core.artifact import STATUS_FAILED, STATUS_OK, Manifest
from edgerun.core.errors import PreflightError

from .bundle import Bundle


def _release(version: str | None) -> str | None:
    """``1.5.1+cpu`` -> ``1.5.1``: the local label does not change the runtime."""
    if not version:
        return None
    return re.split(r"[+]", str(version))[0]


@dataclass
class PreflightReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing_operators: list[str] = field(default_factory=list)
    missing_backends: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"ok": self.ok, "problems": self.problems, "warnings": self.warnings,
                "missing_operators": self.missing_operators, "missing_backends": self.missing_backends}


#: the runner feature (its header's and bundle.json's ``features``) of ``--ptd PATH``: a program's external data file
RUNNER_FEATURE_DATA = "ptd"


def runner_features(bundle: Bundle) -> tuple[str, ...] | None:
    """What the bundle's runner advertised it takes (``bundle.json`` ``features``, from its header when the
    bundle was built): () for a bundle from before the list, None when the runner could not run to say."""
    if "features" not in bundle.raw:
        return ()
    features = bundle.raw["features"]
    return None if features is None else tuple(features)


def preflight(manifest: Manifest, bundle: Bundle) -> PreflightReport:
    """Compare a manifest with a bundle; never raises for an incompatibility (see ``check_compatible``)."""
    r = PreflightReport()
    needed_ops = sorted(manifest.operators.non_delegated)
    needed_backends = sorted(manifest.operators.delegated)

    if manifest.status == STATUS_FAILED:
        r.warnings.append("the artifact failed its numeric verification at export (manifest status "
                          "'failed'): its outputs are known to disagree with eager PyTorch")
    elif manifest.status != STATUS_OK:
        r.warnings.append(f"the artifact's status is {manifest.status!r}, not 'ok'")

    wrote = _release(manifest.versions.get("executorch"))
    have = _release(bundle.executorch_version)
    if wrote is None:
        r.warnings.append("the manifest does not say which executorch version wrote the program")
    elif wrote != have:
        r.problems.append(f"version mismatch: the program was exported with executorch {wrote}, the bundle "
                          f"runs executorch {have}")

    arch = manifest.target.arch
    if arch not in (None, "any", bundle.arch):
        # An ExecuTorch program is portable bytecode plus delegate payloads (XNNPACK's is a graph,
        # not machine code), so it runs on any arch whose runtime has its kernels and backends:
        # running an rpi5 program on the host is how its outputs are cross-checked. Say that the
        # timings then describe this machine, not the target.
        r.warnings.append(f"the program was exported for {manifest.target.name} ({arch}) and "
                          f"runs here on {bundle.arch}: it works, but timings describe this machine, not the target")

    if manifest.files.get("data"):
        features = runner_features(bundle)
        if features is None:
            r.warnings.append(f"the program has an external data file ({manifest.files['data']}) and the bundle does "
                              "not say whether its runner takes one (built without being able to run it)")
        elif RUNNER_FEATURE_DATA not in features:
            r.problems.append(f"the program keeps weights in an external data file ({manifest.files['data']}), which "
                              f"this bundle's runner cannot load: it does not advertise '{RUNNER_FEATURE_DATA}' "
                              "(--ptd) in its features, so it predates programs with a .ptd")

    r.missing_backends = [b for b in needed_backends if b not in bundle.backends]
    if r.missing_backends:
        r.problems.append(f"missing delegate backend(s): {', '.join(r.missing_backends)} (the bundle registers "
                          f"{', '.join(bundle.backends) or 'none'})")

    if bundle.operators is None:
        if needed_ops:
            r.warnings.append(f"the bundle lists no operators (built without being able to run it), so "
                              f"{len(needed_ops)} non-delegated operator(s) could not be checked")
    else:
        registered = set(bundle.operators)
        r.missing_operators = [op for op in needed_ops if op not in registered]
        if r.missing_operators:
            r.problems.append(f"missing operator(s): {', '.join(r.missing_operators)} (not registered by the "
                              f"{bundle.variant} bundle's kernel libraries: "
                              f"{', '.join(bundle.kernel_libraries) or 'none'})")
    return r


def _hint(report: PreflightReport, bundle: Bundle) -> str:
    hints = []
    if report.missing_operators and bundle.variant == "slim":
        hints.append("use the full bundle (`edgerun runtime build --variant full`), whose optimized kernels "
                      "cover the portable operators")
    elif report.missing_operators:
        hints.append("re-export for a target whose delegate covers these operators, or build a runner with the "
                     "kernel library that provides them")
    if report.missing_backends:
        hints.append("build a bundle with that backend, or re-export for a target this bundle supports")
    if any("external data file" in p for p in report.problems):
        hints.append("rebuild the bundle with this edgerun (`edgerun runtime build --force`): its runner takes "
                     "the program's .ptd")
    if any(p.startswith("version mismatch") for p in report.problems):
        hints.append("re-export the model with this edgerun's executorch, or build the bundle from the "
                     "executorch version that exported it")
    return "; ".join(hints).capitalize() + "." if hints else ""


def check_compatible(manifest: Manifest, bundle: Bundle, *, enforce: bool = True) -> PreflightReport:
    """``preflight`` that raises :class:`PreflightError` on problems (unless ``enforce`` is False)."""
    report = preflight(manifest, bundle)
    if enforce and not report.ok:
        name = manifest.model.name
        raise PreflightError(f"bundle {bundle.path.name} cannot run {name}: {'; '.join(report.problems)}.",
                             hint=_hint(report, bundle))
    return report
