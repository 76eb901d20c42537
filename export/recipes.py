"""Recipes: what an export does to a model before lowering it, as typed configs with handlers beside them.

A recipe is a small frozen dataclass (torchao's habit: one verb, typed nouns). ``name`` is the registry
key users type and ``kind`` what it does (:data:`KINDS`: quantize / prune / factorize / distill /
transform); every dataclass field is an option with a default; class variables say what the recipe
demands of verification (``min_snr_db``/``min_cosine`` for models, ``ppl_tolerance`` for LLMs) and
whether it takes calibration inputs. Its handler is registered beside it (torchao's
``register_quantize_module_handler`` habit)::

    @dataclasses.dataclass(frozen=True)
    class Prune(Recipe):
        name = "prune"
        kind = "prune"
        amount: float = 0.5

    @recipe_handler(Prune)
    def _prune(recipe: Prune, ctx: RecipeContext) -> RecipeResult:
        ...  # change ctx.module (the pipeline's own copy) and say what was done
        return RecipeResult(ctx.module, facts={"zeroed": n})

A handler serves one *flavour*: ``model`` (:func:`edgerun.export.pipeline.export_model`) or ``llm``
(:mod:`edgerun.export.llm.export`); ``recipe_handler(cls, llm=True)`` registers the LLM one. A recipe
with no handler for a flavour is refused before any work.

Recipes compose: a :class:`RecipeChain` applies its steps in order on the eager model; it has at most
one quantize step, and that step comes last (it may capture the graph itself, e.g. PT2E). Its text
(``--recipe``/``--scheme``, bench's ``--recipes``/``--schemes``) is ``step[+step...]``, each step written
either way:

- ``name(value, ..., key=value, ...)`` — the call form people type: positional values fill the recipe's
  :attr:`Recipe.positional` options in order (``prune-channels(0.3)``, ``8da4w(64)``), keywords any option
  (``8da4w(group_size=64)``). A positional slot may name alternatives, ``"rank|ratio"``: the value goes to
  the first whose type accepts it (``lowrank(32)`` is rank 32, ``lowrank(0.5)`` ratio 0.5);
- ``name[:key=value[:key=value...]]`` — ``8da4w:group_size=64``, ``prune-channels:ratio=0.3+int8``.

Commas appear only inside parentheses (a list of recipes on the command line is separated by ``;``).
:attr:`RecipeChain.spec` is the canonical text, always in the ``name:key=value`` form (steps in order,
options sorted, only the options that differ from their defaults, an ``fp32`` step beside others left out),
so ``parse_recipe("8da4w(64)").spec == "8da4w:group_size=64"`` and ``parse_recipe("int8").spec == "int8"``
(cell keys, artifact folders and sweep ids are made from it); :attr:`RecipeChain.recipe_hash` covers every
option of every step and does not depend on how the text was written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
from typing import Any, Callable, ClassVar, Iterable, Union

from edgerun.core.errors import UsageError

from .errors import ExportError

RECIPE_SCHEMA_VERSION = 1
KINDS = ("quantize", "prune", "factorize", "distill", "transform")
FLAVOURS = ("model", "llm")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Base of every recipe. Subclasses set ``name`` and ``kind`` (plain class attributes) and declare
    their options as dataclass fields with defaults; validate them in ``__post_init__`` (``ValueError``)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    description: ClassVar[str] = ""
    #: the program's numbers are quantized (a quantize step that is not fp32)
    quantized: ClassVar[bool] = False
    #: the step runs calibration inputs through the model (``--calibration`` feeds it)
    uses_calibration: ClassVar[bool] = False
    #: the step leaves the model as it is (fp32): dropped from a chain with other steps, never run
    noop: ClassVar[bool] = False
    #: models: how close the program must stay to eager PyTorch (None: this step adds no demand)
    min_snr_db: ClassVar[float | None] = None
    min_cosine: ClassVar[float | None] = None
    #: LLMs: how far the program's held-out perplexity may move from eager fp32's (a fraction) because of
    #: this step; the chain's tolerance is the sum over its steps
    ppl_tolerance: ClassVar[float] = 0.0
    #: the options that recipe text's positional values fill, in order (``prune-channels(0.3)``); an entry
    #: ``"a|b"`` takes the value into the first of a, b whose type accepts it
    positional: ClassVar[tuple[str, ...]] = ()
    #: options added after recipes of this class were stored: left out of :meth:`options` (so of the recipe
    #: hash, cell keys and manifests) while they hold their default, so those recipes keep their identity
    later_options: ClassVar[tuple[str, ...]] = ()

    def options(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.later_options:
            changed = self.changed_options()
            for name in self.later_options:
                if name not in changed:
                    out.pop(name, None)
        return out

    def program_facts(self, pte: Any) -> dict[str, Any]:
        """Facts about the written program (``pte``: its path) this step adds to its own once the program is
        written: ``sparsify`` records the program's compressed size. Models only."""
        return {}

    def changed_options(self) -> dict[str, Any]:
        """The options that differ from their defaults (what :attr:`spec` shows)."""
        out = {}
        for f in dataclasses.fields(self):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            value = getattr(self, f.name)
            if default is dataclasses.MISSING or value != default:
                out[f.name] = value
        return out

    @property
    def spec(self) -> str:
        opts = self.changed_options()
        return ":".join([self.name, *(f"{k}={_format_value(opts[k])}" for k in sorted(opts))])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options(), "recipe_hash": self.recipe_hash}

    def step_json(self) -> dict[str, Any]:
        """What the recipe identity records of this step: name, kind and every option."""
        return {"name": self.name, "kind": self.kind, "options": self.options()}

    @property
    def recipe_hash(self) -> str:
        canonical = json.dumps({"v": RECIPE_SCHEMA_VERSION, "scheme": self.name, "options": self.options()},
                               sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------- handlers
@dataclasses.dataclass
class RecipeContext:
    """What a handler is given. ``module``: the eager model after the earlier steps — for a step that is
    not a quantize step it is the pipeline's own copy, so the handler may change it in place; a quantize
    step must leave it unchanged (copy first). ``calibration(n)`` returns up to ``n`` calibration input
    tuples (models; for LLMs windows ``(tokens [1, T], input_pos [T])`` of the export's calibration text, in
    order, each from position 0); ``capture(module, without=())`` runs torch.export and the target's
    graph rewrites, except those named in ``without`` (models; None for LLMs); ``warn(text)`` reports what a
    person should know.

    For a distill step: ``teacher`` is the model before the chain's first prune/factorize step (None when no
    such step came before this one; never changed: every step runs on its own copy); ``heldout(n)`` gives
    up to ``n`` inputs the calibration never gives, in calibration's form (models: the dataset's test split
    or inputs generated with another seed, None with a calibration file; LLMs: windows of the held-out text);
    ``labelled(n)`` up to ``n`` labelled training inputs (models with a dataset; else None). What these
    return may be :class:`Samples`, which also say where they came from."""

    module: Any
    example: tuple
    target: Any                                   # export.targets.Target
    flavour: str                                  # "model" | "llm"
    calibration: Callable[[int], list] | None = None
    capture: Callable[..., Any] | None = None
    warn: Callable[[str], None] = lambda text: None
    teacher: Any = None
    heldout: Callable[[int], list] | None = None
    labelled: Callable[[int], list] | None = None


class Samples(list):
    """Input tuples (a list) that say where they came from: ``source`` (``digits train``, ``generated``,
    ``file:...``) and, when labelled, ``labels`` (one a sample)."""

    def __init__(self, items: Iterable = (), source: str = "", labels: Any = None):
        super().__init__(items)
        self.source, self.labels = source, labels


@dataclasses.dataclass
class RecipeResult:
    """A handler's answer: the model after the step, the captured program when the handler captured it
    itself (a PT2E quantizer works on the graph), and facts for the manifest."""

    module: Any
    exported: Any = None
    facts: dict = dataclasses.field(default_factory=dict)


Handler = Callable[[Recipe, RecipeContext], RecipeResult]

#: name -> recipe class (every kind); SCHEMES is the quantize-kind part, kept in step
RECIPES: dict[str, type[Recipe]] = {}
SCHEMES: dict[str, type[Recipe]] = {}
_HANDLERS: dict[tuple[type, str], Handler] = {}


class Registration:
    """What :func:`register_recipe` returns: also a context manager that unregisters on exit (tests)."""

    def __init__(self, cls: type[Recipe], flavours: tuple[str, ...], added: bool):
        self.cls, self._flavours, self._added = cls, flavours, added

    def __enter__(self) -> type[Recipe]:
        return self.cls

    def __exit__(self, *exc) -> None:
        if self._added:
            unregister_recipe(self.cls)
        else:
            for flavour in self._flavours:
                _HANDLERS.pop((self.cls, flavour), None)


def _check_class(cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Recipe) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass subclass of edgerun.export.Recipe")
    fields = {f.name for f in dataclasses.fields(cls)}
    if fields & {"name", "kind"}:
        raise TypeError(f"{cls.__name__}: name and kind must be plain class attributes (name = \"...\"), "
                        "not dataclass fields")
    name, kind = getattr(cls, "name", None), getattr(cls, "kind", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise TypeError(f"{cls.__name__}: recipe name {name!r} must be letters, digits, '_', '.', '-' "
                        "(no ':', '+', '=' or ',': they are recipe text's separators)")
    if kind not in KINDS:
        raise TypeError(f"{cls.__name__}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if not cls.__dataclass_params__.frozen:
        raise TypeError(f"{cls.__name__} must be a frozen dataclass (recipes are values with a hash)")
    positional = getattr(cls, "positional", ())
    if not isinstance(positional, tuple) or not all(isinstance(p, str) for p in positional):
        raise TypeError(f"{cls.__name__}: positional must be a tuple of option names, got {positional!r}")
    bad = [n for p in positional for n in p.split("|") if n not in fields]
    if bad:
        raise TypeError(f"{cls.__name__}: positional names {', '.join(bad)}, which are not its options "
                        f"({', '.join(sorted(fields)) or 'none'})")


def register_recipe(cls: type[Recipe], handler: Handler | None = None, *,
                    llm_handler: Handler | None = None) -> Registration:
    """Register ``cls`` (and its model / LLM handlers). Returns a :class:`Registration`, which as a
    context manager unregisters what it added. Another class under the same name is refused."""
    _check_class(cls)
    other = RECIPES.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"recipe name {cls.name!r} is taken by {other.__module__}.{other.__qualname__}")
    added = other is None
    RECIPES[cls.name] = cls
    if cls.kind == "quantize":
        SCHEMES[cls.name] = cls
    flavours = []
    for flavour, fn in (("model", handler), ("llm", llm_handler)):
        if fn is not None:
            _HANDLERS[(cls, flavour)] = fn
            flavours.append(flavour)
    return Registration(cls, tuple(flavours), added)


def recipe_handler(cls: type[Recipe], *, llm: bool = False) -> Callable[[Handler], Handler]:
    """Decorator: register the function as ``cls``'s handler for models (or LLMs, ``llm=True``); the
    class is registered too if it was not."""

    def deco(fn: Handler) -> Handler:
        register_recipe(cls, **({"llm_handler": fn} if llm else {"handler": fn}))
        return fn

    return deco


def unregister_recipe(cls_or_name: type[Recipe] | str) -> None:
    """Remove a recipe and its handlers (a test's own recipe, after the test)."""
    name = cls_or_name if isinstance(cls_or_name, str) else cls_or_name.name
    cls = RECIPES.pop(name, None)
    if cls is None:
        return
    SCHEMES.pop(name, None)
    for flavour in FLAVOURS:
        _HANDLERS.pop((cls, flavour), None)


def handler_for(recipe: Recipe, flavour: str) -> Handler | None:
    return _HANDLERS.get((type(recipe), flavour))


def _known() -> str:
    return "; ".join(f"{kind}: {', '.join(n for n, c in RECIPES.items() if c.kind == kind)}"
                     for kind in KINDS if any(c.kind == kind for c in RECIPES.values()))


def make_recipe(name: str, **options: Any) -> Recipe:
    """Build a registered recipe by name; unknown names and options are a :class:`UsageError`
    (options that are None are left at their defaults)."""
    cls = RECIPES.get(name)
    if cls is None:
        raise UsageError(f"unknown recipe {name!r}.", hint=f"Known recipes — {_known()}.")
    return _build(cls, {k: v for k, v in options.items() if v is not None}, "recipe")


def _build(cls: type[Recipe], options: dict, what: str) -> Recipe:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(f"{what} {cls.name!r} takes no option {', '.join(unknown)}.",
                         hint=f"Its options: {', '.join(sorted(fields)) or 'none'}.")
    try:
        return cls(**options)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{what} {cls.name!r}: {exc}.", hint=f"Its options: {_options_text(cls)}.") from None


# ------------------------------------------------------------------------------------ text
def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field_type(cls: type, name: str) -> Any:
    try:
        hint = typing.get_type_hints(cls)[name]
    except Exception:  # an annotation that does not resolve: fall back to the default's type
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return type(f.default) if f.default is not dataclasses.MISSING else str
    return hint


def _options_text(cls: type[Recipe]) -> str:
    """A recipe's options as a hint names them: ``importance, ratio (defaults importance=magnitude,
    ratio=0.25; positional: ratio)``."""
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.name)
    if not fields:
        return "none"
    defaults = [f"{f.name}={_format_value(f.default)}" for f in fields if f.default not in (dataclasses.MISSING, None)]
    extra = [f"defaults {', '.join(defaults)}"] if defaults else []
    if cls.positional:
        extra.append(f"positional: {', '.join(cls.positional)}")
    return ", ".join(f.name for f in fields) + (f" ({'; '.join(extra)})" if extra else "")


def _parse_value(cls: type[Recipe], name: str, text: str) -> Any:
    kind = _field_type(cls, name)
    optional = False
    if typing.get_origin(kind) in (Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional = len(args) < len(typing.get_args(kind))
        kind = args[0] if len(args) == 1 else str
    if optional and text.lower() == "none":
        return None
    where = f"option {name} of recipe {cls.name!r}"
    hint = f"Its options: {_options_text(cls)}."
    if kind is bool:
        low = text.lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise UsageError(f"{where} is true or false, not {text!r}.", hint=hint)
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{where} is an integer, not {text!r}.", hint=hint) from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"{where} is a number, not {text!r}.", hint=hint) from None
    if kind is str:
        return text
    raise UsageError(f"{where} has type {kind!r}, which recipe text cannot give.",
                     hint="Build the recipe in Python and pass it to export_model.")


def _recipe_class(name: str, text: str) -> type[Recipe]:
    if not name:
        raise UsageError(f"recipe step {text!r} has no name.",
                         hint="Write name(value, key=value) or name:key=value, e.g. 8da4w(group_size=64).")
    cls = RECIPES.get(name)
    if cls is None:
        raise UsageError(f"unknown recipe {name!r}.", hint=f"Known recipes — {_known()}.")
    return cls


def _keyword(cls: type[Recipe], text: str, pair: str, options: dict[str, Any]) -> None:
    fields = {f.name for f in dataclasses.fields(cls)}
    key, eq, value = (x.strip() for x in pair.partition("="))
    if not eq or not key or not value:
        raise UsageError(f"recipe step {text!r}: {pair.strip()!r} is not key=value.",
                         hint=f"Options of {cls.name}: {_options_text(cls)}.")
    if key not in fields:
        raise UsageError(f"recipe {cls.name!r} takes no option {key}.", hint=f"Its options: {_options_text(cls)}.")
    if key in options:
        raise UsageError(f"recipe step {text!r} gives option {key} twice.", hint=f"Its options: {_options_text(cls)}.")
    options[key] = _parse_value(cls, key, value)


def _positional(cls: type[Recipe], text: str, slot: str, value: str, options: dict[str, Any]) -> None:
    names = slot.split("|")
    taken = [n for n in names if n in options]
    if taken:
        raise UsageError(f"recipe step {text!r} gives option {taken[0]} twice (by position and by name).",
                         hint=f"Its options: {_options_text(cls)}.")
    errors = []
    for n in names:
        try:
            options[n] = _parse_value(cls, n, value)
            return
        except UsageError as exc:
            errors.append(exc.message.rstrip("."))
    if len(errors) == 1:
        raise UsageError(errors[0] + ".", hint=f"Its options: {_options_text(cls)}.")
    raise UsageError(f"recipe step {text!r}: {value!r} is none of {', '.join(names)} ({'; '.join(errors)}).",
                     hint=f"Its options: {_options_text(cls)}.")


_CALL = re.compile(r"([^()]*)\((.*)\)\Z", re.S)


def parse_step(text: str) -> Recipe:
    """One step: ``name(value, ..., key=value, ...)`` or ``name[:key=value[:key=value...]]`` -> the recipe."""
    stripped = text.strip()
    options: dict[str, Any] = {}
    if "(" in stripped or ")" in stripped:
        m = _CALL.match(stripped)
        if not m or "(" in m.group(2) or ")" in m.group(2):
            raise UsageError(f"recipe step {text!r} is not name(value, key=value): its parentheses do not pair.",
                             hint="Write e.g. prune-channels(0.3), 8da4w(group_size=64) or 8da4w:group_size=64.")
        cls = _recipe_class(m.group(1).strip(), text)
        args = m.group(2).strip()
        items = [a.strip() for a in args.split(",")] if args else []
        if any(not a for a in items):
            raise UsageError(f"recipe step {text!r} has an empty argument.", hint=f"Its options: {_options_text(cls)}.")
        values = [a for a in items if "=" not in a]
        if values and items.index(values[-1]) >= len(values):
            raise UsageError(f"recipe step {text!r}: a positional value follows key=value.",
                             hint=f"Give the positional values first. Its options: {_options_text(cls)}.")
        if len(values) > len(cls.positional):
            takes = (f"takes {len(cls.positional)} positional value(s) ({', '.join(cls.positional)})"
                     if cls.positional else "takes no positional value")
            raise UsageError(f"recipe {cls.name!r} {takes}, and {text.strip()!r} gives {len(values)}.",
                             hint=f"Give the others as key=value. Its options: {_options_text(cls)}.")
        for slot, value in zip(cls.positional, values):
            _positional(cls, text, slot, value, options)
        for pair in items[len(values):]:
            _keyword(cls, text, pair, options)
    else:
        name, *pairs = stripped.split(":")
        cls = _recipe_class(name.strip(), text)
        for pair in pairs:
            _keyword(cls, text, pair, options)
    return _build(cls, options, "recipe")


def split_top_level(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_recipe(text: str) -> "RecipeChain":
    """``step[+step...]`` -> a :class:`RecipeChain`; see the module docstring."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError("an empty recipe.", hint=f"Give e.g. fp32, int8, 8da4w(group_size=64). Known recipes — "
                                                 f"{_known()}.")
    if ";" in text:
        raise UsageError(f"recipe {text!r} contains a ';'.",
                         hint="';' separates recipes in a list (bench --recipes \"int8; prune-channels(0.3)+int8\"); "
                              "one recipe joins its steps with '+'.")
    if len(split_top_level(text, ",")) > 1:
        raise UsageError(f"recipe {text!r} contains a comma outside parentheses.",
                         hint="Options go inside a step's parentheses (8da4w(group_size=64)) or after ':' "
                              "(8da4w:group_size=64), steps are joined with '+' (STEP+int8); a list of recipes is "
                              "separated by ';' (bench --recipes).")
    return RecipeChain(tuple(parse_step(part) for part in split_top_level(text, "+")))


def split_recipes(text: str) -> list[str]:
    """A ``;``-separated list of recipes (bench ``--recipes``), each checked: ``"8da4w; lowrank(0.5)+8da4w"``."""
    items = [t.strip() for t in str(text).split(";")]
    if not any(items):
        raise UsageError("--recipes lists no recipe.", hint="Give e.g. --recipes \"int8; prune-channels(0.3)+int8\".")
    for t in items:
        if t:
            parse_recipe(t)
    return [t for t in items if t]


# ----------------------------------------------------------------------------------- chain
def _fp32() -> Recipe:
    return RECIPES["fp32"]()


@dataclasses.dataclass(frozen=True)
class RecipeChain:
    """Recipes applied in order on the eager model: at most one quantize step, and it comes last. An
    ``fp32`` step beside other steps does nothing and is dropped; an empty chain is ``fp32``."""

    steps: tuple[Recipe, ...]

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        bad = [s for s in steps if not isinstance(s, Recipe)]
        if bad:
            raise TypeError(f"a recipe chain holds recipes, not {type(bad[0]).__name__}")
        if len(steps) > 1:
            steps = tuple(s for s in steps if not s.noop)
        if not steps:
            steps = (_fp32(),)
        quant = [i for i, s in enumerate(steps) if s.kind == "quantize"]
        if len(quant) > 1:
            raise UsageError(f"recipe {'+'.join(s.spec for s in steps)} has {len(quant)} quantize steps "
                             f"({', '.join(steps[i].name for i in quant)}); a chain has at most one.")
        if quant and quant[0] != len(steps) - 1:
            raise UsageError(f"recipe {'+'.join(s.spec for s in steps)}: the quantize step {steps[quant[0]].name} "
                             "must come last.", hint="Put the prune, factorize or transform steps first and "
                                                     "the quantize step last (STEP+int8).")
        for i, s in enumerate(steps):   # a distill step recovers what a prune/factorize step before it cost
            if s.kind == "distill" and not any(p.kind in ("prune", "factorize") for p in steps[:i]):
                raise UsageError(f"recipe {'+'.join(x.spec for x in steps)}: the distill step {s.name} comes before "
                                 "any prune or factorize step, so there is nothing to recover (it distils the model "
                                 "before the first of them into the model after them).",
                                 hint="Put it after a prune or factorize step (lowrank:rank=32+distill+int8), or "
                                      "drop it.")
        object.__setattr__(self, "steps", steps)

    @classmethod
    def of(cls, value: "str | Recipe | RecipeChain | Iterable[Recipe] | None", default: str = "fp32") -> "RecipeChain":
        """A chain from recipe text, a recipe, a chain or a list of recipes (None: ``default``)."""
        if value is None:
            value = default
        if isinstance(value, RecipeChain):
            return value
        if isinstance(value, str):
            return parse_recipe(value)
        if isinstance(value, Recipe):
            return cls((value,))
        return cls(tuple(value))

    # -- what it is
    @property
    def spec(self) -> str:
        return "+".join(s.spec for s in self.steps)

    @property
    def name(self) -> str:
        """The step names without options: the scheme's name for one plain scheme (``int8``)."""
        return "+".join(s.name for s in self.steps)

    @property
    def quantize(self) -> Recipe:
        """The quantize step, or fp32."""
        return next((s for s in self.steps if s.kind == "quantize"), None) or _fp32()

    @property
    def transforms(self) -> tuple[Recipe, ...]:
        """The steps before quantization (prune, factorize, distill, transform)."""
        return tuple(s for s in self.steps if s.kind != "quantize")

    @property
    def quantized(self) -> bool:
        return self.quantize.quantized

    @property
    def uses_calibration(self) -> bool:
        return any(s.uses_calibration for s in self.steps)

    @property
    def is_plain(self) -> bool:
        """One quantize step and nothing else (what every export was before chains)."""
        return not self.transforms

    @property
    def recipe_hash(self) -> str:
        """Of every option of every step; for one quantize step, that step's own hash."""
        if self.is_plain:
            return self.quantize.recipe_hash
        canonical = json.dumps({"v": RECIPE_SCHEMA_VERSION, "steps": [s.step_json() for s in self.steps]},
                               sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def identity_steps(self) -> tuple[dict, ...] | None:
        """The chain as the recipe identity records it; None for one quantize step (its ``scheme`` says all)."""
        return None if self.is_plain else tuple(s.step_json() for s in self.steps)

    # -- what verification demands
    def _all(self) -> tuple[Recipe, ...]:
        return self.steps if any(s.kind == "quantize" for s in self.steps) else (*self.steps, self.quantize)

    @property
    def min_snr_db(self) -> float:
        return min(s.min_snr_db for s in self._all() if s.min_snr_db is not None)

    @property
    def min_cosine(self) -> float:
        return min(s.min_cosine for s in self._all() if s.min_cosine is not None)

    @property
    def ppl_tolerance(self) -> float:
        return sum(s.ppl_tolerance for s in self._all())

    # -- changes
    def with_options(self, **options: Any) -> "RecipeChain":
        """Set options of the quantize step (the CLI's --group-size, --calibration-samples ...); None
        values are ignored. An option the quantize step does not take is a :class:`UsageError`."""
        given = {k: v for k, v in options.items() if v is not None}
        if not given:
            return self
        q = self.quantize
        step = _build(type(q), {**q.options(), **given}, "scheme")
        if any(s.kind == "quantize" for s in self.steps):
            return RecipeChain(tuple(step if s is q else s for s in self.steps))
        return RecipeChain((*self.steps, step))

    def check_handlers(self, flavour: str) -> None:
        """Refuse a step that has no handler for ``flavour`` (before any work)."""
        for s in self._all():
            if handler_for(s, flavour) is None:
                what = "an LLM" if flavour == "llm" else "a model"
                usable = [n for n, c in RECIPES.items() if (c, flavour) in _HANDLERS]
                raise UsageError(f"recipe {s.name!r} has no handler for {what}.",
                                 hint=f"Recipes for {what}: {', '.join(usable)}.")

    def stages(self) -> tuple[tuple[str, Recipe], ...]:
        """(stage name, step) for every step that does something (not a ``noop`` like fp32): the stage is
        named after the step's kind (``prune``, ``quantize``), with its name when the kind repeats."""
        kinds = [s.kind for s in self.steps]
        return tuple((s.kind if kinds.count(s.kind) == 1 else f"{s.kind} {s.name}", s) for s in self.steps
                     if not s.noop)

    @staticmethod
    def run_step(step: Recipe, ctx: RecipeContext) -> RecipeResult:
        """Run one step's handler. A step that is not a quantize step gets a copy of the module, so the
        caller's model is never changed."""
        handler = handler_for(step, ctx.flavour)
        if handler is None:
            RecipeChain((step,)).check_handlers(ctx.flavour)
        if step.kind != "quantize":
            ctx = dataclasses.replace(ctx, module=copy.deepcopy(ctx.module))
        result = handler(step, ctx)
        if not isinstance(result, RecipeResult):
            raise ExportError(f"the handler of recipe {step.name!r} returned {type(result).__name__}, not a "
                              "RecipeResult.", stage=step.kind)
        return result

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.spec, "recipe_hash": self.recipe_hash, "steps": [s.step_json() for s in self.steps]}

    def __str__(self) -> str:
        return self.spec
