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
        "(tracebacks on error). Caches, bundles and results live under EDGERUN_HOME "
        "(the downloaded aarch64 ExecuTorch wheel: in EDGERUN_WHEEL_CACHE, default ~/.cache/edgerun/wheels)."
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
    "edgerun.cli.llm_cmd",
    "edgerun.cli.finetune_cmd",
    "edgerun.cli.toolchain_cmd",
    "edgerun.cli.estimate_cmd",
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


def _wants_json(args: list[str]) -> bool:
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def main() -> None:
    """The console script: the app, with the conventions of ``_common`` also for calls the argument
    parser refuses (an unknown option, a missing argument): exit 2, and with ``--json`` one JSON
    error object on stdout."""
    import sys

    try:  # typer >= 0.2x vendors click as typer._click; older ones use click itself
        from typer._click import exceptions as click_exceptions
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exceptions

    from ._common import INTERRUPTED_EXIT, err_console, usage_error_json

    args = sys.argv[1:]
    try:
        code = app(args=args, prog_name="edgerun", standalone_mode=False)
    except click_exceptions.UsageError as exc:  # also BadParameter, NoSuchOption, MissingParameter
        if _wants_json(args):
            hint = f"See `{exc.ctx.command_path} --help`." if exc.ctx is not None else None
            print(usage_error_json(exc.format_message(), hint), flush=True)
        else:
            exc.show()
        sys.exit(exc.exit_code)
    except click_exceptions.ClickException as exc:
        if _wants_json(args):
            print(usage_error_json(exc.format_message()), flush=True)
        else:
            exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        sys.exit(INTERRUPTED_EXIT)
    sys.exit(code if isinstance(code, int) else 0)
