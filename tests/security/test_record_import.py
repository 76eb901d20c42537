"""Issue 20 item 2: ``runs import`` trusted what it imported.

A ``record.json`` with escapes in its names put them into ``runs list``, ``runs show``, ``report`` and
``compare``; one with negative samples was stored and shown as *measured*. An imported record is now
validated like runner output (:func:`edgerun.runtime.record.check_record_dict`) and refused, exit 2,
naming the field. These tests take a real record (analysed from runner lines, with training and LLM
sections), then break every field's type in turn, put escapes into every text field, and break the
ranges, the finiteness, the source labels, the version and the size.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from edgerun.runtime.record import EvalPoint, LLMMetrics, RecordInvalid, RunRecord, TrainingMetrics
from edgerun.store import Store, import_runs

ROOT = Path(__file__).resolve().parents[2]
# free-form sections (build flags, settings, a request): their entries are JSON of any shape, still
# checked for finite numbers and plain text, but a different type there is not an error
FREE_FORM = ("provenance.runner_build", "provenance.threads_auto", "training.settings", "llm.request",
             "model.inputs[")
DERIVED = ("labels", "device.int8_dot_product", ".exact")   # written for readers, not read back


def _profiling_helpers():
    name = "edgerun_tests_profiling_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "profiling" / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def real_record() -> RunRecord:
    h = _profiling_helpers()
    rec = h.analyse_lines(h.runner_lines([5_000_000 + 1000 * i for i in range(12)], warmup_ns=[9_000_000]),
                          h.manifest(), {**h.HOST_INFO, "temperature_c": 41.5, "cpu_features": ["neon"]},
                          run_id="r-20260101-abcdef")
    training = TrainingMetrics(
        method="full", optimizer="sgd", lr=0.1, steps=3, start_step=0, batch=16, grad_accum=1, trainable=10,
        frozen=0, trainable_bytes=40, optimizer_state_bytes=40, train_samples=64, eval_samples=32,
        loss_curve=((1, 2.3), (2, 2.1), (3, 1.9)), eval=(EvalPoint("before", 0, 32, 2.3, 0.1),),
        steps_per_s=10.0, samples_per_s=160.0, data_sha256="0" * 64, checkpoint="/x/checkpoint.bin",
        settings={"batch": 16})
    llm = LLMMetrics(test="tg4", mode="generate", prompt_tokens=3, new_tokens=4, decode_tokens_per_s=50.0,
                     ids=(1, 2, 3), text="hello\n\tworld", request={"chat": False})
    return dataclasses.replace(rec, training=training, llm=llm, warnings=("one warning",))


@pytest.fixture(scope="module")
def good() -> dict:
    return json.loads(json.dumps(real_record().to_dict()))


def leaves(d, path=""):
    """(path, value) of every field the record schema reads, as the validator names them."""
    if path and (path.startswith(FREE_FORM) or path.endswith(DERIVED) or path in DERIVED):
        return
    if isinstance(d, dict):
        for k, v in d.items():
            yield from leaves(v, f"{path}.{k}" if path else k)
        if path:
            yield path, d
    elif isinstance(d, list):
        for i, v in enumerate(d[:2]):
            yield from leaves(v, f"{path}[{i}]")
        yield path, d
    else:
        yield path, d


def _set(d, path, value):
    import re

    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    for p in parts[:-1]:
        d = d[int(p[1:-1])] if p.startswith("[") else d[p]
    last = parts[-1]
    if last.startswith("["):
        d[int(last[1:-1])] = value
    else:
        d[last] = value


def _wrong_type(v):
    if isinstance(v, bool):
        return "yes"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return 12345
    if isinstance(v, list):
        return {"not": "a list"}
    if isinstance(v, dict):
        return ["not", "an object"]
    return None


def _import(tmp_path, d):
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "record.json").write_text(json.dumps(d))
    with Store(tmp_path / "s.sqlite") as s:
        try:
            return import_runs(s, [run_dir])
        finally:
            assert len(s) == 0 or s.contains(d.get("run_id", "")), "a refused record must store nothing"


def test_the_real_record_imports(tmp_path, good):
    assert [r["status"] for r in _import(tmp_path, good)] == ["imported"]
    with Store(tmp_path / "s.sqlite") as s:
        assert s.get(good["run_id"]) == RunRecord.from_dict(good)


GOOD = json.loads(json.dumps(real_record().to_dict()))
TYPED = [p for p, v in leaves(GOOD) if v is not None]
TEXT = [p for p, v in leaves(GOOD) if isinstance(v, str)]


@pytest.mark.parametrize("path", TYPED)
def test_every_field_of_the_wrong_type_is_refused_by_name(tmp_path, good, path):
    d = copy.deepcopy(good)
    _set(d, path, _wrong_type(eval_path(good, path)))
    with pytest.raises(RecordInvalid) as ei:
        _import(tmp_path, d)
    assert ei.value.exit_code == 2 and f"field {path}" in ei.value.message and "record.json" in ei.value.message


def eval_path(d, path):
    import re

    for p in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        d = d[int(p[1:-1])] if p.startswith("[") else d[p]
    return d


@pytest.mark.parametrize("escape", ["\x1b]0;owned\x07", "\x1b[2J", "\u202e", "\x9b31m", "\r"])
def test_escapes_in_every_text_field_are_refused(tmp_path, good, escape):
    assert len(TEXT) > 15
    for path in TEXT:
        d = copy.deepcopy(good)
        _set(d, path, f"name{escape}x")
        with pytest.raises(RecordInvalid) as ei:
            _import(tmp_path, d)
        what = "is " if path == "run_id" else "holds terminal escapes"  # a run id is refused by its alphabet first
        assert f"field {path} {what}" in ei.value.message, ei.value.message


@pytest.mark.parametrize("path, value, why", [
    ("samples[3].execute_ns", -5_000_000, ">= 0"),
    ("samples[0].execute_ns", -1, ">= 0"),
    ("latency.median_ms", -1.0, ">= 0"),
    ("latency.median_ms", 0.001, "the samples give"),
    ("latency.n", 3, "timed samples"),
    ("memory.peak_rss_bytes", -1, ">= 0"),
    ("latency.cv", float("nan"), "finite"),
    ("latency.mean_ms", float("inf"), "finite"),
    ("training.loss_curve", [[1, float("nan")]], "finite"),
    ("training.eval[0].accuracy", 1.5, "fraction"),
    ("source", "measured-ish", "measured, emulated, estimated"),
    ("memory.sources", {"peak_rss_bytes": "guessed"}, "measured, emulated, estimated"),
    ("record_version", 99, "record versions"),
    ("run_id", "../../etc", "letters, digits"),
    ("created_at", "yesterday", "ISO 8601"),
    ("llm.ids", [1] * 3 + [-4], ">= 0"),
])
def test_ranges_finiteness_labels_and_versions_are_checked(tmp_path, good, path, value, why):
    d = copy.deepcopy(good)
    _set(d, path, value)
    with pytest.raises(RecordInvalid) as ei:
        _import(tmp_path, d)
    assert f"field {path}" in ei.value.message and why in ei.value.message, ei.value.message


def test_a_missing_field_is_named(tmp_path, good):
    for path in ("memory", "source", "provenance.edgerun_version", "model.name", "device.arch", "latency.n"):
        d = copy.deepcopy(good)
        parent, _, key = path.rpartition(".")
        del (eval_path(d, parent) if parent else d)[key]
        with pytest.raises(RecordInvalid, match=f"field {path} is missing"):
            _import(tmp_path, d)


def test_an_oversized_record_is_not_read(tmp_path, good, monkeypatch):
    import edgerun.store as store_mod

    monkeypatch.setattr(store_mod, "MAX_RECORD_BYTES", 1000)
    with pytest.raises(RecordInvalid, match="bytes; a run record is at most 1,000"):
        _import(tmp_path, good)


def test_the_cli_refuses_with_exit_2_and_stores_nothing(cli, tmp_path, good):
    d = copy.deepcopy(good)
    d["model"]["name"] = "tiny\x1b]0;owned\x07net"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "record.json").write_text(json.dumps(d))
    r = cli("runs", "import", str(run_dir), "--store", str(tmp_path / "s.sqlite"), "--json")
    assert r.returncode == 2, r.stderr
    err = json.loads(r.stdout)["error"]
    assert "field model.name" in err["message"] and "\x1b" not in r.stdout + r.stderr
    r = cli("runs", "list", "--store", str(tmp_path / "s.sqlite"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["runs"] == []
