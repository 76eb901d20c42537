"""What a deployment left on a device: :func:`edgerun.runtime.deploy.deploy` returns it, and a run mode reads
where the runner, the program, the test vectors and the held-out inputs are (``RunContext.deployment``,
:mod:`.modes`). A record of paths and facts, with no behaviour: both of those modules import it."""

from __future__ import annotations

import dataclasses

from .bundle import Bundle
from .preflight import PreflightReport


@dataclasses.dataclass(frozen=True)
class Deployment:
    device: str
    arch: str
    bundle: Bundle
    bundle_dir: str                 # on the device
    program: str                    # on the device
    vectors: list[list[str]]        # per test vector, its input paths on the device
    preflight: PreflightReport
    pushed: list[str]
    skipped: list[str]
    dataset_inputs: str | None = None  # on the device: the held-out split's stacked inputs, if any
    data: str | None = None            # on the device: the program's external data file (.ptd), if it has one

    def to_json(self) -> dict:
        return {"device": self.device, "arch": self.arch, "bundle": str(self.bundle.path),
                "bundle_dir": self.bundle_dir, "program": self.program, "data": self.data, "vectors": len(self.vectors),
                "dataset_inputs": self.dataset_inputs,
                "preflight": self.preflight.to_json(), "pushed": self.pushed, "skipped": self.skipped}
