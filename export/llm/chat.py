"""A GGUF's chat template (Jinja) rendered the way llama.cpp and transformers render it, in a sandbox whose
output, values and time are bounded: a template that would build a 20 GB string or loop for ever is
refused with an :class:`~edgerun.core.errors.ArtifactError` (exit 9), quickly.

Every value is sized at the sandbox's operators, attributes, items, calls, filters and printed values;
the known amplifiers (``*``, ``**``, format widths, ``ljust``/``center``, ``replace``, ``join``,
``indent``, ``batch``) are checked before they build anything; the output streams against
:data:`MAX_CHAT_CHARS`; a render stops at :data:`CHAT_SECONDS` (hook clock checks, plus a watchdog for
loops that call no hook).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from edgerun.core.errors import ArtifactError

from .tokenizer import MAX_TEMPLATE_CHARS

#: A rendered chat prompt is at most this many characters (or twice its messages, if those are longer):
#: far more than any context a model on a device takes, far less than a machine's memory.
MAX_CHAT_CHARS = 1 << 20
#: ... and takes at most this long; a real template renders in milliseconds.
CHAT_SECONDS = 2.0
MAX_INT_BITS = 1 << 16


class TemplateBudgetExceeded(BaseException):
    """Raised inside a render that went over its size or time budget (turned into an ArtifactError). A
    BaseException, so that no ``except Exception`` inside Jinja or a filter swallows it."""


class _Budget:
    def __init__(self, max_chars: int, seconds: float) -> None:
        self.max_chars, self.seconds = max_chars, seconds
        self.deadline = time.monotonic() + seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateBudgetExceeded(f"it ran for more than {self.seconds:g} s")

    def allow(self, n: int, what: str) -> None:
        """Refuse to build a value of ``n`` characters/items."""
        if n > self.max_chars:
            raise TemplateBudgetExceeded(f"{what} would make a value of {n} or more characters or items (the "
                                         f"limit is {self.max_chars})")

    def size(self, value: Any) -> int:
        """Characters and items of ``value`` counted through its containers, every reference counted (a
        list of one long string repeated is as large as it prints); stops counting past the limit."""
        from collections.abc import MappingView

        from jinja2.utils import Namespace

        total, stack = 0, [value]
        while stack and total <= self.max_chars:
            v = stack.pop()
            if isinstance(v, (str, bytes)):
                total += len(v)
            elif isinstance(v, dict):
                total += len(v)
                stack.extend(v.keys())
                stack.extend(v.values())
            elif isinstance(v, (list, tuple, set, frozenset, MappingView)):
                total += len(v)
                stack.extend(v)
            elif isinstance(v, Namespace):   # prints as its attributes
                total += 1
                stack.append(dict(v._Namespace__attrs))
            elif isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > MAX_INT_BITS:
                raise TemplateBudgetExceeded(f"an integer of {v.bit_length()} bits")
            else:
                total += 1
        return total

    def check(self, value: Any, what: str = "a value") -> Any:
        self.allow(self.size(value), what)
        return value

    def format(self, fmt: Any, args: Iterable[Any], what: str) -> None:
        """A ``%`` or ``str.format`` format whose field widths or precisions (given, or taken from the
        arguments by ``*`` / nested ``{}``) would build more than the limit."""
        if not isinstance(fmt, str):
            return
        fields = re.findall(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?", fmt) + \
            [(spec, "") for spec in re.findall(r"\{[^{}]*:([^{}]*)", fmt)]
        indirect = "*" in fmt or re.search(r"\{[^{}]*:[^{}]*\{", fmt) is not None
        for field in fields:
            for digits in re.findall(r"\d+", " ".join(field)):
                if len(digits) > 12 or int(digits) > self.max_chars:
                    raise TemplateBudgetExceeded(f"{what} asks for a field {digits} characters wide")
        if indirect:
            for a in args:
                if isinstance(a, int) and not isinstance(a, bool) and abs(a) > self.max_chars:
                    raise TemplateBudgetExceeded(f"{what} asks for a field {a} characters wide")


def _length(x: Any) -> int:
    return len(x) if isinstance(x, (str, bytes, list, tuple, dict)) else len(str(x))


def _check_replace(budget: _Budget, s: Any, old: Any, new: Any, count: Any, what: str) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        hits = s.count(old) if old else len(s) + 1
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        budget.allow(len(s) + hits * (len(new) - len(old)), what)


def _check_join(budget: _Budget, items: list, sep: Any, what: str) -> None:
    budget.allow(len(items), what)
    budget.allow(sum(_length(i) for i in items) + _length(sep) * max(len(items) - 1, 0), what)


def _guard_str_method(budget: _Budget, s: str, name: str, method: Callable) -> Callable:
    """A str method whose result size is checked before it is built."""
    def call(*args, **kwargs):
        budget.tick()
        first = args[0] if args else None
        if name in ("center", "ljust", "rjust", "zfill"):
            width = first if args else kwargs.get("width", 0)
            budget.allow(width if isinstance(width, int) else 0, f"str.{name}")
        elif name == "expandtabs":
            size = first if args else kwargs.get("tabsize", 8)
            budget.allow(len(s) + s.count("\t") * max(size if isinstance(size, int) else 8, 0), "str.expandtabs")
        elif name == "replace" and len(args) >= 2:
            _check_replace(budget, s, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count"),
                           "str.replace")
        elif name == "join" and args:
            items = list(first)
            _check_join(budget, items, s, "str.join")
            args = (items,) + args[1:]
        elif name in ("format", "format_map"):
            budget.format(s, list(args) + list(kwargs.values()), "a format string")
        return budget.check(method(*args, **kwargs), f"str.{name}")
    return call


_STR_AMPLIFIERS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "format",
                             "format_map"})


def _check_filter(budget: _Budget, name: str, args: list, kwargs: dict) -> None:
    """Refuse the filters that amplify their input before they build what they would."""
    def arg(i: int, key: str, default: Any = None) -> Any:
        return args[i] if len(args) > i else kwargs.get(key, default)

    value = arg(0, "value")
    if name == "center":
        width = arg(1, "width", 80)
        budget.allow(width if isinstance(width, int) else 0, "the filter 'center'")
    elif name == "indent" and isinstance(value, str):
        width = arg(1, "width", 4)
        n = len(width) if isinstance(width, str) else width if isinstance(width, int) else 4
        budget.allow(len(value) + (value.count("\n") + 1) * max(n, 0), "the filter 'indent'")
    elif name in ("batch", "slice"):
        n = arg(1, "linecount" if name == "batch" else "slices", 1)
        n = n if isinstance(n, int) else 0
        budget.allow(n, f"the filter {name!r}")
        budget.allow(n * budget.size(arg(2, "fill_with")), f"the filter {name!r}")
    elif name in ("tojson", "pprint"):
        indent = arg(1, "indent", 0)
        if isinstance(indent, int):
            budget.allow(indent, f"the filter {name!r}")
            budget.allow(_length(value) * (1 + max(indent, 0)), f"the filter {name!r}")
    elif name == "replace":
        _check_replace(budget, value, arg(1, "old"), arg(2, "new"), arg(3, "count"), "the filter 'replace'")
    elif name == "join" and value is not None and not isinstance(value, str):
        items = list(value)
        _check_join(budget, items, arg(1, "d", ""), "the filter 'join'")
        args[0] = items
    elif name == "wordwrap" and isinstance(value, str):
        wrap = arg(4, "wrapstring") or "\n"
        budget.allow(len(value) * (1 + _length(wrap)), "the filter 'wordwrap'")
    elif name == "format":
        budget.format(value, list(args[1:]) + list(kwargs.values()), "the filter 'format'")


def _guard_filter(budget: _Budget, name: str, f: Callable) -> Callable:
    """A Jinja filter that ticks the clock, is refused when it would amplify past the limit, and whose
    result is bounded."""
    import functools

    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context

    @functools.wraps(f)
    def call(*args, **kwargs):
        budget.tick()
        from jinja2 import Environment

        lead = 1 if args and isinstance(args[0], (EvalContext, Context, Environment)) else 0
        rest = list(args[lead:])
        budget.allow(budget.size(rest) + budget.size(kwargs), f"the filter {name!r}")
        _check_filter(budget, name, rest, kwargs)
        return budget.check(f(*args[:lead], *rest, **kwargs), f"the filter {name!r}")
    return call


def _generation_extension():
    """``{% generation %}...{% endgeneration %}`` (transformers marks the assistant's part of a template so):
    renders its body."""
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return Generation


def _bounded_env(budget: _Budget):
    from jinja2.compiler import CodeGenerator, optimizeconst
    from jinja2.sandbox import ImmutableSandboxedEnvironment, MAX_RANGE

    class BoundedCodeGenerator(CodeGenerator):
        """``a ~ b`` compiles to the environment's :meth:`bounded_concat` instead of a bare join, so that
        a list of many references to one long string is sized before it is turned into text."""

        @optimizeconst
        def visit_Concat(self, node, frame) -> None:
            self.write("environment.bounded_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        """Jinja's immutable sandbox with a size and time budget at every operator, concatenation, call,
        attribute, item, filter, printed value and loop over ``range``."""

        code_generator_class = BoundedCodeGenerator
        # intercepted operators are also never constant-folded when the template is compiled
        intercepted_binops = frozenset({"+", "*", "**", "%", "//", "/", "-"})

        def bounded_concat(self, values) -> str:
            budget.tick()
            parts, total = [], 0
            for value in values:
                budget.check(value, "'~'")
                text = str(value)
                total += len(text)
                budget.allow(total, "'~'")
                parts.append(text)
            return "".join(parts)

        def call_binop(self, context, operator, left, right):
            budget.tick()
            budget.check(left, f"{operator!r}")
            budget.check(right, f"{operator!r}")
            seqs = (str, list, tuple)
            if operator == "*":
                if isinstance(left, seqs) and isinstance(right, int):
                    budget.allow(budget.size(left) * max(right, 0), "'*'")
                elif isinstance(right, seqs) and isinstance(left, int):
                    budget.allow(budget.size(right) * max(left, 0), "'*'")
                elif isinstance(left, int) and isinstance(right, int):
                    if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                        raise TemplateBudgetExceeded("'*' would make an integer too large")
            elif operator == "+" and isinstance(left, seqs) and isinstance(right, seqs):
                budget.allow(budget.size(left) + budget.size(right), "'+'")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                if right > 0 and left.bit_length() * right > MAX_INT_BITS:
                    raise TemplateBudgetExceeded("'**' would make an integer too large")
            elif operator == "%" and isinstance(left, str):
                budget.format(left, right if isinstance(right, (tuple, list)) else [right], "'%' formatting")
            return budget.check(super().call_binop(context, operator, left, right), f"{operator!r}")

        def getattr(self, obj, attribute):
            budget.tick()
            value = super().getattr(obj, attribute)
            if isinstance(obj, str) and attribute in _STR_AMPLIFIERS and callable(value):
                return _guard_str_method(budget, obj, attribute, value)
            return budget.check(value, f"the attribute {attribute!r}")

        def getitem(self, obj, argument):
            budget.tick()
            return budget.check(super().getitem(obj, argument), "an item")

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
            budget.tick()
            for a in list(args) + list(kwargs.values()):
                budget.check(a, "an argument")
            return budget.check(super().call(__context, __obj, *args, **kwargs), "a call")

    # finalize: every value a {{ }} prints is sized before it is turned into text. Extensions as
    # transformers renders chat templates with: {% break %}/{% continue %}, {% generation %} blocks.
    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols",
                                                                              _generation_extension()],
                             finalize=lambda value: budget.check(value, "a printed value"))
    env.filters = {name: _guard_filter(budget, name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)   # lipsum(n) writes n paragraphs: no chat template needs it

    def bounded_range(*args):
        r = range(*args)
        if len(r) > MAX_RANGE:
            raise TemplateBudgetExceeded(f"range() of {len(r)} items (the sandbox allows {MAX_RANGE})")
        for i in r:
            budget.tick()
            yield i

    def raise_exception(message="the template raised an error"):
        from jinja2.exceptions import TemplateError

        raise TemplateError(str(message))

    def strftime_now(fmt: str) -> str:
        budget.allow(len(str(fmt)) * 16, "strftime_now")
        return time.strftime(str(fmt))

    env.globals.update(range=bounded_range, raise_exception=raise_exception, strftime_now=strftime_now)
    return env


class _Watchdog:
    """Runs a function and raises :class:`TemplateBudgetExceeded` in its thread after ``seconds`` (and
    again every :attr:`AGAIN` seconds until it returns), even inside a loop that calls none of the
    sandbox's hooks: CPython's asynchronous exceptions. Elsewhere the hooks' own clock checks are the
    bound."""

    AGAIN = 0.25

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.fired = self.done = False
        self.ident = threading.get_ident()
        self.timer: threading.Timer | None = None
        self.api = None

    def _arm(self, after: float) -> None:
        self.timer = threading.Timer(after, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        import ctypes

        with self.lock:
            if self.done:
                return
            self.fired = True
            self.api(ctypes.c_ulong(self.ident), ctypes.py_object(TemplateBudgetExceeded))
            self._arm(self.AGAIN)

    def _disarm(self) -> None:
        import ctypes

        # The exception may arrive while this runs: then finish again (the next one is AGAIN away), so
        # that nothing is left armed or pending once the function is over.
        for _ in range(3):
            try:
                with self.lock:
                    self.done = True
                    if self.timer is not None:
                        self.timer.cancel()
                    if self.fired:  # perhaps raised but not yet delivered: withdraw it
                        self.api(ctypes.c_ulong(self.ident), None)
                return
            except TemplateBudgetExceeded:
                continue

    def run(self, fn: Callable[[], Any]) -> Any:
        try:
            import ctypes
            self.api = ctypes.pythonapi.PyThreadState_SetAsyncExc
        except (ImportError, AttributeError):
            return fn()
        try:   # armed inside the try: whatever arrives, the finally disarms
            self._arm(self.seconds)
            return fn()
        finally:
            self._disarm()


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", source: str = "the chat template",
                max_chars: int | None = None, seconds: float = CHAT_SECONDS, **extra: Any) -> str:
    """Render a GGUF chat template (Jinja) as llama.cpp and transformers do, in Jinja's immutable sandbox
    with bounds: the output and every value the template builds stay under ``max_chars`` (default
    :data:`MAX_CHAT_CHARS`, or twice the messages when they are longer), the render under ``seconds``.
    The template gets what transformers gives it: ``raise_exception``, ``strftime_now``, ``{% break %}``,
    ``{% continue %}`` and ``{% generation %}`` (not ``lipsum``). A template that breaks a bound, fails
    to parse or fails while rendering (``raise_exception`` included) raises :class:`ArtifactError`
    naming ``source`` -- the template is the model's, not the user's call."""
    if not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS:
        raise ArtifactError(f"{source} is not a template of at most {MAX_TEMPLATE_CHARS} characters.",
                            stage="chat template", hint="Re-export from a GGUF with a sane chat template, or "
                                                        "drop --chat.")
    given = sum(_length(v) for m in messages for v in m.values()) + len(bos_token) + len(eos_token)
    limit = max_chars if max_chars is not None else max(MAX_CHAT_CHARS, 2 * given)
    budget = _Budget(limit, seconds)
    out: list[str] = []
    size = 0

    def render() -> str:
        nonlocal size
        env = _bounded_env(budget)
        compiled = env.from_string(template)
        for chunk in compiled.generate(messages=[dict(m) for m in messages],
                                       add_generation_prompt=add_generation_prompt,
                                       bos_token=bos_token, eos_token=eos_token, **extra):
            size += len(chunk)
            budget.allow(size, "the output")
            budget.tick()
            out.append(chunk)
        return "".join(out)

    try:
        return _Watchdog(seconds).run(render)
    except TemplateBudgetExceeded as exc:
        why = str(exc) or f"it ran for more than {seconds:g} s"
        raise ArtifactError(f"{source} was refused: {why}.", stage="chat template",
                            hint="The template is hostile or broken; drop --chat and give the prompt as plain "
                                 "text, or re-export from a GGUF whose template renders.") from None
    except Exception as exc:  # the model's template failed (TemplateError, TypeError from a filter ...)
        raise ArtifactError(f"{source} cannot be rendered: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                            stage="chat template",
                            hint="Drop --chat and give the prompt as plain text, or re-export from a GGUF whose "
                                 "template renders.") from None
