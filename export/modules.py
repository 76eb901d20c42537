"""Models a Python user has: an ``nn.Module`` with its example inputs, a ``(module, example_inputs)`` pair,
or a ``torch.export.ExportedProgram`` — as a :class:`~edgerun.export.zoo.ModelSpec` like any other.

Such a model has no name to key a cache on, so its recipe identity is derived from what it is: the code
of its classes (``inspect.getsource`` of every module class that is not torch's own — torch's are named,
and torch's version is in the identity anyway — else the qualified name) and a sha256 of its
``state_dict`` (names, dtypes, shapes, bytes), plus the example inputs' shapes and dtypes. Changing a
weight changes the recipe hash; so does editing ``forward``.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

from edgerun.core.errors import UsageError

from .zoo.base import ModelSpec

WHAT = ("a zoo name, 'package.module:factory', a .gguf path, an nn.Module with example_inputs=, "
        "a (module, example_inputs) pair or a torch.export.ExportedProgram")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_torchs(cls: type) -> bool:
    return cls.__module__ == "torch" or cls.__module__.startswith(("torch.", "torchvision.", "torchao."))


def code_sha256(module) -> tuple[str, list[str]]:
    """sha256 over the classes of ``module`` and its submodules: source where there is one, else the name."""
    classes = sorted({type(m) for m in module.modules()}, key=_qualname)
    h = hashlib.sha256()
    for cls in classes:
        h.update(_qualname(cls).encode() + b"\0")
        if not _is_torchs(cls):
            try:
                h.update(inspect.getsource(cls).encode())
            except (OSError, TypeError):  # defined in a REPL or a notebook cell: the name is all there is
                pass
        h.update(b"\0")
    return h.hexdigest(), [_qualname(c) for c in classes]


def _tensor_bytes(t) -> bytes:
    import torch

    t = t.detach().cpu().contiguous()
    try:
        return t.reshape(-1).view(torch.uint8).numpy().tobytes()
    except (RuntimeError, TypeError):  # a tensor subclass or a dtype without a byte view
        return repr(t).encode()


def state_sha256(tensors) -> str:
    """sha256 of named tensors (a state_dict): name, dtype, shape and bytes of each, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        if not hasattr(t, "dtype"):
            h.update(f"{name}={t!r}\0".encode())
            continue
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _example(example_inputs: Any, what: str) -> tuple:
    import torch

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if (not isinstance(example_inputs, (tuple, list)) or not example_inputs
            or not all(isinstance(t, torch.Tensor) for t in example_inputs)):
        raise UsageError(f"{what}: example_inputs must be a tensor or a non-empty tuple of tensors, got "
                         f"{type(example_inputs).__name__}.",
                         hint="Pass the inputs forward() takes, e.g. example_inputs=(torch.randn(1, 3, 32, 32),).")
    return tuple(example_inputs)


def _shapes(example: tuple) -> list:
    return [[list(t.shape), str(t.dtype).replace("torch.", "")] for t in example]


def from_module(module, example_inputs: Any, *, name: str | None = None) -> ModelSpec:
    """A spec for an ``nn.Module`` and its example inputs. (A module in training mode is exported as an
    ``eval()`` copy, with a warning; the caller's module is left as it is.)"""
    cls = type(module)
    label = name or cls.__name__
    example = _example(example_inputs, f"model {label}")
    code, classes = code_sha256(module)
    identity = {"code_sha256": code, "classes": classes, "state_sha256": state_sha256(module.state_dict()),
                "example": _shapes(example)}

    def build():
        return module, example

    return ModelSpec(name=label, description=f"{_qualname(cls)} (a Python object)", task="unknown", build=build,
                     source="python", origin=_qualname(cls), identity=identity)


def from_exported(program, *, name: str | None = None, example_inputs: Any = None) -> ModelSpec:
    """A spec for a ``torch.export.ExportedProgram``: its graph module is the eager model, its example
    inputs (or ``example_inputs``) the example; identity from the graph's code and its weights."""
    label = name or "exported_program"
    if example_inputs is None:
        args, kwargs = program.example_inputs or ((), {})
        if kwargs:
            raise UsageError(f"model {label}: the ExportedProgram was captured with keyword inputs "
                             f"({', '.join(kwargs)}); edgerun passes inputs by position.",
                             hint="Export it with positional example inputs, or pass example_inputs=(...).")
        example_inputs = args
    example = _example(example_inputs, f"model {label}")
    code = hashlib.sha256(program.graph_module.code.encode()).hexdigest()
    identity = {"code_sha256": code, "classes": ["torch.export.ExportedProgram"],
                "state_sha256": state_sha256({**program.state_dict, **program.constants}), "example": _shapes(example)}

    def build():
        return program.module(), example

    return ModelSpec(name=label, description="a torch.export.ExportedProgram (a Python object)", task="unknown",
                     build=build, source="exported", origin="torch.export.ExportedProgram", identity=identity)


def resolve_model(model: Any, example_inputs: Any = None, *, name: str | None = None) -> ModelSpec:
    """Whatever :func:`edgerun.export.export_model` was given -> a :class:`ModelSpec`."""
    from .zoo import get_model

    if isinstance(model, (ModelSpec, str)):
        if example_inputs is not None:
            raise UsageError(f"example_inputs apply to a model given as an nn.Module; {_label(model)} brings its "
                             "own example inputs.", hint="Drop example_inputs=.")
        spec = model if isinstance(model, ModelSpec) else get_model(model)
        return spec
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(model, torch.export.ExportedProgram):
        return from_exported(model, name=name, example_inputs=example_inputs)
    if isinstance(model, (tuple, list)) and len(model) == 2 and torch is not None \
            and isinstance(model[0], torch.nn.Module):
        if example_inputs is not None:
            raise UsageError("the model was given as a (module, example_inputs) pair and example_inputs= as well.",
                             hint="Give the example inputs once.")
        return from_module(model[0], model[1], name=name)
    if torch is not None and isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise UsageError(f"an nn.Module ({type(model).__name__}) needs example inputs to fix the program's "
                             "shapes.", hint="export_model(module, target, scheme, example_inputs=(torch.randn(...),)) "
                                             "or export_model((module, example_inputs), ...).")
        return from_module(model, example_inputs, name=name)
    raise UsageError(f"cannot export a {type(model).__name__}: the model must be {WHAT}.")


def _label(model: Any) -> str:
    return repr(model.name if isinstance(model, ModelSpec) else model)
