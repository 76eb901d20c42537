"""What a zoo entry is, and how user models (``package.module:factory``) become one."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Sequence

from ..errors import ExportError, UsageError


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Real samples for a model that has them: calibration, test vectors and task accuracy.

    ``train``/``test`` return ``(inputs, labels)`` with inputs already shaped as the model takes
    them one sample at a time, stacked on dim 0 (``[N, *sample_shape]``).
    """

    name: str
    load: Callable[[], dict[str, Any]]  # -> {"train": (x, y), "test": (x, y)}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    task: str                                     # "classification" | "embedding" | ...
    build: Callable[[], tuple[Any, tuple]]         # -> (eval-mode nn.Module, example inputs)
    dataset: Dataset | None = None
    source: str = "zoo"                            # zoo | factory | gguf | python | exported
    origin: str = ""                               # where the definition comes from
    #: what the recipe identity records of a model the caller handed over as an object (its code's and
    #: weights' hashes: :mod:`edgerun.export.modules`); None for models named by text
    identity: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "task": self.task,
                "source": self.source, "origin": self.origin,
                "dataset": self.dataset.name if self.dataset else None}


def load_factory(path: str) -> ModelSpec:
    """Turn ``package.module:factory`` into a :class:`ModelSpec`.

    ``factory()`` must return ``(torch.nn.Module, tuple_of_example_inputs)``.
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UsageError(f"{path!r} is not a model name or a 'package.module:factory' path.")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself raising
        raise ExportError(
            f"cannot import module {module_name!r} for model factory {path!r}: {type(exc).__name__}: {exc}.",
            stage="load model",
            hint="Check the module is on PYTHONPATH (run from its folder or install it).",
        ) from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ExportError(f"module {module_name!r} has no attribute {attr!r} (from {path!r}).",
                              stage="load model")
    if not callable(factory):
        raise ExportError(f"{path!r} is not callable: it is a {type(factory).__name__}.", stage="load model")

    def build() -> tuple[Any, tuple]:
        import torch

        try:
            result = factory()
        except Exception as exc:
            raise ExportError(f"model factory {path!r} raised {type(exc).__name__}: {exc}.",
                              stage="load model") from exc
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ExportError(
                f"model factory {path!r} returned {type(result).__name__}, expected a pair "
                "(torch.nn.Module, tuple_of_example_inputs).", stage="load model")
        model, inputs = result
        if not isinstance(model, torch.nn.Module):
            raise ExportError(f"model factory {path!r} returned {type(model).__name__} as its model, "
                              "expected a torch.nn.Module.", stage="load model")
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        if not isinstance(inputs, Sequence) or not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise ExportError(f"model factory {path!r} must return a non-empty tuple of tensors as example "
                              f"inputs, got {type(inputs).__name__}.", stage="load model")
        return model.eval(), tuple(inputs)

    return ModelSpec(name=path, description=f"user model from {path}", task="unknown", build=build,
                     source="factory", origin=path)
