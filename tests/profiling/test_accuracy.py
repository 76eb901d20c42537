"""Device outputs against eager references: known answers, clear errors, and a real runtime."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from manifests import write_artifact

from edgerun.core.artifact import read_manifest
from edgerun.core.errors import ArtifactError
from edgerun.runtime.accuracy import (
    AccuracyError, AccuracyResult, compare_vectors, task_accuracy,
)


def test_exact_match_is_infinite_snr_and_flagged_exact():
    ref = [np.arange(12, dtype=np.float32).reshape(3, 4)]
    r = compare_vectors([ref], [ref])
    (o,) = r.outputs
    assert o.exact and math.isinf(o.snr_db) and o.max_abs == 0.0 and o.cosine == pytest.approx(1.0)
    assert o.top1_agreement == 1.0


def test_known_error_gives_known_snr_max_abs_and_top1():
    ref = np.ones((4, 5), dtype=np.float32)
    ref[:, 0] = 2.0  # argmax column 0 everywhere
    act = ref + np.float32(0.1)
    act[3, 4] = 3.0  # row 3 now votes for column 4
    r = compare_vectors([[act]], [[ref]])
    (o,) = r.outputs
    assert o.max_abs == pytest.approx(2.0)
    assert o.top1_agreement == pytest.approx(0.75)
    noise = np.mean((act.astype(np.float64) - ref) ** 2)
    assert o.snr_db == pytest.approx(10 * math.log10(np.mean(ref.astype(np.float64) ** 2) / noise))


def test_worst_vector_wins():
    ref = np.ones((1, 3), dtype=np.float32)
    good, bad = ref + np.float32(0.001), ref + np.float32(0.1)
    r = compare_vectors([[good], [bad]], [[ref], [ref]], names=["logits"])
    assert r.vectors == 2 and r.outputs[0].name == "logits"
    assert r.outputs[0].snr_db == pytest.approx(20.0, abs=0.1)  # 1 / 0.01 -> 20 dB, the bad vector's


def test_shape_mismatch_names_vector_and_output():
    ref = [np.zeros((1, 10), np.float32), np.zeros((1, 3), np.float32)]
    act = [np.zeros((1, 10), np.float32), np.zeros((1, 4), np.float32)]
    with pytest.raises(AccuracyError, match=r"test vector 0: output 1: shape"):
        compare_vectors([act], [ref])


def test_dtype_mismatch_names_the_output():
    with pytest.raises(AccuracyError, match=r"output 0: dtype int8"):
        compare_vectors([[np.zeros(3, np.int8)]], [[np.zeros(3, np.float32)]])


def test_count_mismatch_is_an_error():
    with pytest.raises(AccuracyError, match="1 outputs where the reference has 2"):
        compare_vectors([[np.zeros(3)]], [[np.zeros(3), np.zeros(3)]])
    with pytest.raises(AccuracyError, match="no outputs"):
        compare_vectors([], [])


def test_task_accuracy_known_answer_and_errors():
    logits = [np.eye(3, dtype=np.float32), np.array([[0, 1, 0]], np.float32)]
    assert task_accuracy(logits, [0, 1, 2, 2]) == pytest.approx(0.75)
    with pytest.raises(AccuracyError, match="4 predictions for 3 labels"):
        task_accuracy(logits, [0, 1, 2])


def test_load_test_vectors_follows_the_manifest(tmp_path):
    write_artifact(tmp_path)
    manifest = read_manifest(tmp_path)
    [vec] = manifest.load_test_vectors()
    assert vec.inputs[0].shape == (1, 2) and vec.outputs[0].shape == (1, 3)
    (tmp_path / "vectors/000/output_0.npy").unlink()
    with pytest.raises(ArtifactError, match="test vector 0 output 'vectors/000/output_0.npy' .*is missing"):
        manifest.load_test_vectors()


def test_real_runtime_outputs_match_eager_closely(profiled_program):
    r = compare_vectors([profiled_program.outputs], [profiled_program.reference], source="measured")
    assert len(r.outputs) == 2
    assert all(o.snr_db > 60 and o.cosine > 0.9999 for o in r.outputs)  # fp32 XNNPACK vs eager
    assert r.outputs[1].top1_agreement == 1.0
    assert AccuracyResult.from_dict(r.to_dict()) == r
