"""The arrows of DESIGN.md, read from the code: every import of every module, checked against them.

    edgerun.core     imports nothing of edgerun
    edgerun.export   -> edgerun.core
    edgerun.devices  -> edgerun.core
    edgerun.runtime  -> edgerun.core, edgerun.devices (the devices interface)
    the hall         (edgerun/*.py but the CLI) -> core and the three rooms
    edgerun.cli      is imported by nobody (but itself and edgerun.__main__)

Imports are read with ``ast``: ``import`` and ``from ... import`` anywhere in a file (inside
functions and ``if TYPE_CHECKING:`` too), relative imports resolved against the file's package.
``import edgerun`` / ``from edgerun import __version__`` is an import of the hall: a room asks
``edgerun.core.version`` for the version instead.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# folder of the checkout -> the package it installs as (pyproject.toml's package-dir)
FOLDERS = {"core": "edgerun.core", "export": "edgerun.export", "runtime": "edgerun.runtime",
           "devices": "edgerun.devices", "edgerun": "edgerun"}

ROOMS = ("core", "export", "runtime", "devices")
ALLOWED = {  # layer -> the layers it may import (its own always included)
    "core": {"core"},
    "export": {"export", "core"},
    "devices": {"devices", "core"},
    "runtime": {"runtime", "core", "devices"},
    "hall": {"hall", *ROOMS},
    "cli": {"cli", "hall", *ROOMS},
    "main": {"main", "cli", "hall", *ROOMS},
}
RULES = {
    "core": "edgerun.core imports nothing of edgerun",
    "export": "edgerun.export may import only edgerun.core",
    "devices": "edgerun.devices may import only edgerun.core",
    "runtime": "edgerun.runtime may import only edgerun.core and edgerun.devices",
    "hall": "nothing imports edgerun.cli (but edgerun.cli itself and edgerun.__main__)",
}
NAMES = {"core": "edgerun.core", "export": "edgerun.export", "runtime": "edgerun.runtime",
         "devices": "edgerun.devices", "hall": "the hall (edgerun)", "cli": "edgerun.cli",
         "main": "edgerun.__main__"}


def layer(module: str) -> str | None:
    """The layer a dotted module name belongs to; None for anything outside edgerun."""
    parts = module.split(".")
    if parts[0] != "edgerun":
        return None
    if len(parts) == 1:
        return "hall"
    if parts[1] in ROOMS:
        return parts[1]
    if parts[1] == "cli":
        return "cli"
    if parts[1] == "__main__":
        return "main"
    return "hall"  # edgerun.report, edgerun.config, ... and names in edgerun/__init__ (__version__)


@dataclass(frozen=True)
class Violation:
    path: str  # relative to the checked root
    line: int
    importer: str
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported} -- {self.rule}"


def modules(root: Path):
    """(path, dotted module name, is_package) of every .py file under the mapped folders."""
    for folder, package in FOLDERS.items():
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if "__pycache__" in rel.parts or "native" in rel.parts:
                continue
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            yield path, ".".join([package, *parts]), is_package


def imports(tree: ast.AST, module: str, is_package: bool):
    """(line, dotted name) of every import in ``tree``: for ``from X import a`` both X and X.a
    (the latter may be a submodule or just a name in X; both belong to X's layer or a deeper one)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                up = node.level - 1
                if up >= len(base_parts):
                    yield node.lineno, "." * node.level + (node.module or "")  # beyond the top: reported
                    continue
                base = ".".join(base_parts[:len(base_parts) - up])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if node.module:
                yield node.lineno, source
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{source}.{alias.name}"
                elif not node.module:
                    yield node.lineno, source


def check(root: Path) -> list[Violation]:
    found: list[Violation] = []
    for path, module, is_package in modules(root):
        mine = layer(module)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        # one report per import statement and imported layer (from X import a, b: once)
        wrong: dict[tuple[int, str], list[str]] = {}
        for line, name in imports(tree, module, is_package):
            theirs = layer(name) if not name.startswith(".") else "beyond"
            if theirs is not None and theirs not in ALLOWED[mine]:
                wrong.setdefault((line, theirs), []).append(name)
        for (line, theirs), names in wrong.items():
            if theirs == "beyond":
                rule = "a relative import beyond the top-level package"
            else:
                rule = RULES["hall"] if theirs == "cli" else RULES[mine]
            if theirs == "hall" and any(n.split(".")[-1] == "__version__" for n in names):
                rule += "; for the version use edgerun.core.version.version()"
            shown = NAMES["hall"] if theirs == "hall" else names[0]
            found.append(Violation(str(path.relative_to(root)), line, module, shown, rule))
    return sorted(found, key=lambda v: (v.path, v.line))


def test_imports_follow_the_arrows_of_the_design():
    violations = check(ROOT)
    assert not violations, "imports against DESIGN.md's arrows:\n" + "\n".join(map(str, violations))


# Where the extension points live (issue 18): a run mode (a class with a ``mode_name``) in the runtime
# room, a recipe handler (registered with export's registry) in the export room, and the runner's argv
# is built by the runtime only: the hall asks a mode, it never assembles runner flags itself.
PLACES = {
    "mode": ("runtime", "a run mode (a class with mode_name) lives in edgerun.runtime"),
    "recipe": ("export", "a recipe handler is registered in edgerun.export"),
    "argv": ("runtime", "only edgerun.runtime builds the runner's argv (runner_argv, runner_prefix, runner_args)"),
}
ARGV_BUILDERS = {"runner_argv", "runner_prefix", "runner_args"}
RECIPE_REGISTRARS = {"register_recipe", "recipe_handler"}


def misplaced(root: Path) -> list[Violation]:
    """Each definition or use of an extension point outside the room that owns it."""
    found: list[Violation] = []
    for path, module, _is_package in modules(root):
        mine = layer(module)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            what = None
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(t, ast.Name) and t.id == "mode_name"
                    for stmt in node.body for t in (stmt.targets if isinstance(stmt, ast.Assign)
                                                    else [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])):
                what = "mode"
            elif isinstance(node, (ast.Name, ast.Attribute, ast.alias)):
                name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) \
                    else node.name.rpartition(".")[2]
                what = "argv" if name in ARGV_BUILDERS else "recipe" if name in RECIPE_REGISTRARS else None
            if what is not None and PLACES[what][0] != mine:
                found.append(Violation(str(path.relative_to(root)), node.lineno, module, what, PLACES[what][1]))
    return sorted(found, key=lambda v: (v.path, v.line))


def test_extension_points_live_in_their_rooms():
    violations = misplaced(ROOT)
    assert not violations, "extension points outside their rooms:\n" + "\n".join(map(str, violations))


def test_the_place_checker_finds_a_mode_a_handler_and_runner_flags_in_the_hall(tmp_path):
    files = {
        "runtime/modes.py": "class Fine:\n    mode_name = 'forward'\n\ndef f(b):\n    return runner_argv(b)\n",
        "export/recipes.py": "@recipe_handler(int)\ndef h(m):\n    return m\n",
        "edgerun/mine.py": ("class Mine:\n    mode_name: str = 'x'\n\n"
                            "def g(req, ctx):\n    return req.runner_args(ctx)\n"),
        "runtime/prune.py": "from edgerun.export import register_recipe\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    got = sorted((v.path, v.line, v.imported) for v in misplaced(tmp_path))
    assert got == [("edgerun/mine.py", 1, "mode"), ("edgerun/mine.py", 5, "argv"), ("runtime/prune.py", 1, "recipe")]


def test_the_checker_reports_each_wrong_arrow_at_its_file_and_line(tmp_path):
    files = {
        "core/__init__.py": "",
        "core/x.py": ("'''A core module that reaches up.'''\n"
                      "from . import helpers  # fine: core itself\n"
                      "import numpy  # fine: not edgerun\n"
                      "\n"
                      "def late():\n"
                      "    import edgerun.export.pipeline  # inside a function: still an import\n"),
        "core/helpers.py": "from edgerun.core.x import late\n",
        "export/__init__.py": "from .y import thing\n",
        "export/y.py": ("from edgerun.core import errors\n"
                        "from edgerun.runtime import deploy\n"
                        "from ..runtime.bundle import Bundle  # relative, resolved: edgerun.runtime.bundle\n"
                        "thing = 1\n"),
        "runtime/__init__.py": "",
        "runtime/ok.py": "from edgerun.devices import Device\nfrom ..core import errors\n",
        "devices/__init__.py": "from edgerun import __version__\n",
        "edgerun/__init__.py": "from edgerun.runtime import ok\n",
        "edgerun/report.py": "from . import cli\n",
        "edgerun/cli/__init__.py": "from edgerun import report\nfrom edgerun.cli import sub\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)

    got = sorted((v.path, v.line, v.imported, v.rule) for v in check(tmp_path))
    assert got == sorted([
        ("core/x.py", 6, "edgerun.export.pipeline", RULES["core"]),
        ("export/y.py", 2, "edgerun.runtime", RULES["export"]),
        ("export/y.py", 3, "edgerun.runtime.bundle", RULES["export"]),
        ("devices/__init__.py", 1, NAMES["hall"],
         RULES["devices"] + "; for the version use edgerun.core.version.version()"),
        ("edgerun/report.py", 1, "edgerun.cli", RULES["hall"]),
    ])
    assert str(check(tmp_path)[0]).count(":") >= 2  # "path:line: ..." for the failure message
