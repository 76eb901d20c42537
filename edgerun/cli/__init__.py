"""The ``edgerun`` command line. Thin: each command module wires the rooms together.

Command modules each expose ``register(app)``; add a module to ``_COMMAND_MODULES`` to add
commands. Nothing imports this package (design card: nothing imports the CLI).
"""

from __future__ import annotations

import importlib

import typer

from edgerun import __version__

app = typer.Typer(
    name="edgerun",
    help=(
        "Take a PyTorch model to an edge device and tell the truth about how it runs there.\n\n"
        "Every command takes --json (exactly one JSON object on stdout) and --debug "
        "(tracebacks on error). Caches, bundles and results live under EDGERUN_HOME."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_COMMAND_MODULES = [
    "edgerun.cli.export_cmd",
    "edgerun.cli.runtime_cmd",
    "edgerun.cli.devices_cmd",
    "edgerun.cli.results_cmd",
    "edgerun.cli.profile_cmd",
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"edgerun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """edgerun: export, deploy, run and profile PyTorch models on edge devices."""


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()
