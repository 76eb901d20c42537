"""Every numeric (and enumerated) option of the commands that work is checked by the argument parser
before any work (issue 20): 0, negative, NaN, infinity, absurd and malformed values are a usage error
(exit 2) naming the option and what it expects -- never a traceback (exit 1), an export that runs
10 s first (exit 3), or an internal error (70).

The commands are invoked in-process through the real typer app (the parser is all that runs: a
refused value never reaches the command body, which is replaced by a recorder here); one case per
command goes through the console script for the exit code and the one JSON object.
"""

from __future__ import annotations

import json

import pytest

BAD = {
    "profile": {"--warmup": ["-1", "1000000000", "x"], "--iterations": ["0", "-1", "nan", "2.5"],
                "--min-time-ms": ["-1"], "--threads": ["x", "-1", "99999", ",", "1,,-2"],
                "--vector": ["-1"], "--timeout": ["0", "-1", "nan", "inf", "1e12"], "--top": ["-1"]},
    "bench": {"--warmup": ["-1"], "--iterations": ["0"], "--threads": ["-1", "many"]},
    "bench-llm": {"-p": ["-1", "x", "2000000"], "-n": ["x", "-5"], "-r": ["0", "-1"], "-t": ["many", "-1", "auto,1"],
                  "--warmup": ["-1"], "-o": ["xml", "MD"], "--timeout": ["nan", "0"]},
    "generate": {"-n": ["0", "-1", "10000000"], "--temperature": ["-1", "nan", "inf"], "--top-k": ["-1"],
                 "--top-p": ["0", "1.5", "nan"], "--seed": ["-1", str(1 << 64)], "--threads": ["-1", "5000", "1,2"],
                 "--stop-id": ["-1"], "--timeout": ["0", "-inf"]},
    "export": {"--vectors": ["0", "-1", "99999999", "inputs.txt"], "--calibration-samples": ["0", "-3"],
               "--group-size": ["0"], "--embedding-bits": ["3", "16"], "--min-snr-db": ["nan"],
               "--min-cosine": ["2", "nan"], "--min-top1": ["-0.1", "1.5"], "--max-context": ["0", "500000000"]},
    "run": {"--timeout": ["0", "nan"], "--warmup": ["-1"], "-n": ["0"], "--threads": ["-1"], "--vector": ["-1"],
            "--fill": ["noise"], "--min-time-ms": ["-1"]},
    "compare": {"--alpha": ["0", "nan", "1"], "--min-effect": ["-0.1", "nan"]},
    "runs list": {"--limit": ["0", "-1"]},
    "runs show": {"--top": ["-1"]},
    "report": {"--top": ["-1"]},
    "runtime build": {"-j": ["0", "-1", "100000"]},
}

# Enough positional arguments for each command to reach option parsing.
POSITIONAL = {"profile": ["art"], "bench": ["m"], "bench-llm": ["art"], "generate": ["art", "-p", "hi"],
              "export": ["m"], "run": ["art"], "compare": ["a", "b"], "runs list": [], "runs show": ["r"],
              "report": ["r"], "runtime build": []}

CASES = [(cmd, flag, value) for cmd, flags in BAD.items() for flag, values in flags.items() for value in values]


def _invoke(args: list[str]):
    from edgerun.cli import app

    return app(args=args, prog_name="edgerun", standalone_mode=False)


@pytest.fixture
def no_work(monkeypatch):
    """Replace every command module's ``execute`` with a recorder: reaching it means parsing passed."""
    import importlib

    calls: list = []
    for name in ("profile_cmd", "llm_cmd", "export_cmd", "runtime_cmd", "results_cmd"):
        mod = importlib.import_module(f"edgerun.cli.{name}")
        monkeypatch.setattr(mod, "execute", lambda work, **kw: calls.append(work))
    return calls


@pytest.mark.parametrize("cmd,flag,value", CASES, ids=[f"{c}-{f}={v}" for c, f, v in CASES])
def test_a_bad_option_value_is_refused_by_the_parser(cmd, flag, value, no_work):
    import typer

    with pytest.raises(typer.BadParameter) as ei:
        _invoke([*cmd.split(), *POSITIONAL[cmd], f"{flag}={value}" if value.startswith("-") else flag, *(
            [] if value.startswith("-") else [value])])
    assert ei.value.exit_code == 2
    message = ei.value.format_message()
    assert flag.lstrip("-") in message and "expected" in message, message
    assert no_work == [], "the command body ran with a bad option value"


@pytest.mark.parametrize("cmd", sorted(BAD))
def test_the_defaults_and_good_values_pass_the_parser(cmd, no_work):
    _invoke([*cmd.split(), *POSITIONAL[cmd]])
    assert len(no_work) == 1


@pytest.mark.parametrize("args", [
    ["profile", "art", "--threads", "1,2,4", "--iterations", "5", "--timeout", "2.5", "--warmup", "0"],
    ["bench-llm", "art", "-p", "0,64", "-n", "16", "-t", "1,2", "-o", "csv"],
    ["generate", "art", "-p", "hi", "--top-p", "0.9", "--temperature", "0.7", "--stop-id", "2", "--stop-id", "7"],
    ["export", "m", "--vectors", "inputs.npz", "--min-snr-db", "-3", "--embedding-bits", "4"],
    ["run", "art", "--fill", "zeros", "--vector", "3"],
])
def test_good_values_pass_with_their_types(args, no_work):
    _invoke(args)
    assert len(no_work) == 1


def test_option_parsers_return_typed_values():
    from edgerun.cli import options as opt

    assert opt.iterations("7") == 7 and opt.iterations(30) == 30
    assert opt.timeout("2.5") == 2.5 and opt.real(0, 1, lo_open=True)("1") == 1.0
    assert opt.threads_list()("auto") == "auto" and opt.threads_list()("1,2") == "1,2"
    for bad in ("True", True):
        with pytest.raises(opt.BadValue):
            opt.iterations(bad)


@pytest.mark.parametrize("args", [["bench-llm", "art", "-o", "xml"], ["generate", "art", "-p", "x", "-n", "0"],
                                  ["export", "m", "--vectors", "0"], ["profile", "art", "--timeout", "nan"]])
def test_through_the_console_script_exit_2_and_one_json_object(cli, args, tmp_path, edgerun_home):
    """`bench-llm -o xml` was a traceback and exit 1."""
    before = sorted(p.name for p in edgerun_home.iterdir())
    r = cli(*args, "--json")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    [line] = [ln for ln in r.stdout.splitlines() if ln.strip()]
    err = json.loads(line)["error"]
    assert err["exit_code"] == 2 and err["type"] == "UsageError" and "expected" in err["message"]
    assert sorted(p.name for p in edgerun_home.iterdir()) == before, "something was written before the check"
