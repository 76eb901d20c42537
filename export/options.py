"""The options of an export, as one typed value (``edgerun export``'s flags; bench and Python callers too)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """``vectors``: test vectors written and verified (the example is vector 0); ``calibration``: a
    ``.npy``/``.npz`` file of calibration inputs (else the dataset's or generated ones; only recipes that
    run calibration inputs take it); ``vectors_file``: a ``.npy``/``.npz`` file of test inputs (vectors
    are the example + these); ``seed``: of generated inputs; ``overwrite``: replace an existing *artifact*
    at the output directory. An option an export cannot honour is refused with a UsageError."""

    vectors: int = 4
    calibration: str | None = None
    vectors_file: str | None = None
    seed: int = 0
    overwrite: bool = True

    def __post_init__(self) -> None:
        if self.vectors < 1:
            raise ValueError(f"vectors must be at least 1, got {self.vectors}")
