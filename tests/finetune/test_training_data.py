"""Issue 20 item 5: training data is untrusted input.

Labels outside the model's classes reached the runner ("arg 5 with type id 1"), NaN inputs were blamed
on ``--lr``, an empty, junk or pickled ``.npz`` ended in exit 70, ``--steps 0`` was a traceback (exit 1)
and ``--batch 0`` exit 3 after an export. The data is now read from its headers first (nothing
unpickled, sizes bounded), then checked -- keys, shapes, dtypes, label range, finiteness, one label per
sample -- and refused with exit 2 naming the file, the array and what was expected; every option is
checked before any work. (These calls end before a training program is exported.)
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgerun.core.errors import UsageError
from edgerun.finetune import FinetuneSettings, finetune
from edgerun.runtime.train import TrainRequest

MLP = "ft_models:mlp"   # [N, 1, 8, 8] -> 10 classes
ENV = {"PYTHONPATH": str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def good(n=64):
    rng = np.random.default_rng(0)
    return {"x_train": rng.random((n, 1, 8, 8), dtype=np.float32), "y_train": rng.integers(0, 10, n),
            "x_eval": rng.random((16, 1, 8, 8), dtype=np.float32), "y_eval": rng.integers(0, 10, 16)}


def _refused(tmp_path, arrays=None, raw: bytes | None = None, **save_kw):
    path = tmp_path / "data.npz"
    if raw is not None:
        path.write_bytes(raw)
    else:
        np.savez(path, **arrays, **save_kw)
    with pytest.raises(UsageError) as ei:
        finetune(MLP, "local://", TrainRequest(steps=1), FinetuneSettings(batch=8, data=str(path)))
    assert ei.value.exit_code == 2 and str(path) in ei.value.message, ei.value.message
    return ei.value.message


def _with(**changes):
    d = good()
    d.update(changes)
    return {k: v for k, v in d.items() if v is not None}


@pytest.mark.parametrize("key, value, expected", [
    ("y_train", np.r_[np.zeros(63, np.int64), 10], "y_train holds label 10; the model has 10 classes"),
    ("y_train", np.r_[np.zeros(63, np.int64), -1], "y_train holds label -1"),
    ("y_eval", np.full(16, 99), "y_eval holds label 99"),
    ("y_train", np.zeros(64, np.float32), "y_train must be integer class labels"),
    ("y_train", np.zeros((64, 1), np.int64), "y_train must be integer class labels of shape [N]"),
    ("y_train", np.zeros(63, np.int64), "y_train has 63 labels for 64 samples"),
    ("x_train", np.zeros((64, 1, 8, 7), np.float32), "x_train holds samples of shape (1, 8, 7)"),
    ("x_train", np.zeros((64, 1, 8, 8), np.complex64), "x_train holds complex64"),
    ("x_train", np.array(["a"] * 64), "x_train holds <U1"),
])
def test_labels_shapes_and_dtypes_are_checked_before_anything_is_built(tmp_path, key, value, expected):
    assert expected in _refused(tmp_path, _with(**{key: value}))


@pytest.mark.parametrize("key, bad", [("x_train", np.nan), ("x_train", np.inf), ("x_eval", -np.inf)])
def test_non_finite_inputs_are_named_not_blamed_on_the_learning_rate(tmp_path, key, bad):
    arrays = good()
    arrays[key][5, 0, 3, 3] = bad
    msg = _refused(tmp_path, arrays)
    assert f"{key} holds 1 NaN or infinite value(s) (the first in sample 5)" in msg and "learning rate" in msg


def test_empty_arrays_and_missing_keys(tmp_path):
    assert "x_train is empty" in _refused(tmp_path, _with(x_train=np.zeros((0, 1, 8, 8), np.float32),
                                                          y_train=np.zeros(0, np.int64)))
    assert "has no y_train" in _refused(tmp_path, {"x_train": good()["x_train"]})
    assert "x_eval and y_eval go together" in _refused(tmp_path, _with(y_eval=None))


@pytest.mark.parametrize("raw", [b"", b"not a zip at all" * 10, b"PK\x03\x04" + b"\0" * 40],
                         ids=["empty", "junk", "truncated-zip"])
def test_empty_or_junk_files_are_usage_errors_not_internal_errors(tmp_path, raw):
    assert "not a readable .npz" in _refused(tmp_path, raw=raw)


def test_a_pickled_array_is_never_loaded(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    msg = _refused(tmp_path, _with(y_train=np.array([Boom()] * 64, dtype=object)), allow_pickle=True)
    assert "y_train holds object" in msg and "pickled arrays are never loaded" in msg
    assert not (tmp_path / "PWNED").exists()


def test_a_header_claiming_a_huge_array_is_refused_before_it_is_read(tmp_path):
    """A 200-byte file whose header says 4 TB: refused from the header, nothing allocated."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1, 8, 8), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 64
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x_train.npy", npy)
        buf = Path(tmp_path / "y.npy")
        np.save(buf, np.zeros(4, np.int64))
        zf.write(buf, "y_train.npy")
    assert "x_train would take" in _refused(tmp_path, raw=path.read_bytes())


def test_the_cli_checks_options_and_data_before_any_work(cli, tmp_path):
    for args, expected in ((["--steps", "0"], "--steps must be an integer >= 1"),
                           (["--batch", "0"], "--batch must be an integer in [1, 65536]"),
                           (["--rank", "0", "--method", "lora"], "--rank must be an integer")):
        r = cli("finetune", MLP, *args, "--json", env=ENV)
        assert r.returncode == 2, (args, r.stderr)
        assert expected in json.loads(r.stdout)["error"]["message"] and "Traceback" not in r.stderr
        assert "exporting the training program" not in r.stderr   # refused before any work
    (tmp_path / "junk.npz").write_bytes(b"junk")
    r = cli("finetune", MLP, "--data", str(tmp_path / "junk.npz"), "--json", env=ENV)
    assert r.returncode == 2 and "not a readable .npz" in json.loads(r.stdout)["error"]["message"]


def test_an_llm_text_larger_than_the_bound_is_refused_before_it_is_read(tiny_gguf, tmp_path, monkeypatch):
    import edgerun.finetune as ft

    monkeypatch.setattr(ft, "MAX_TEXT_BYTES", 100)
    text = tmp_path / "big.txt"
    text.write_text("word " * 40)
    with pytest.raises(UsageError, match="200 bytes; at most 100 of text is read"):
        finetune(str(tiny_gguf), "local://", TrainRequest(steps=1), FinetuneSettings(batch=2, data=str(text)))
