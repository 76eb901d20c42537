"""The report's fine-tuning memory table (issue 21 item 3): a stored training run's peak RSS per parameter of
the trained model beside the textbook bound of its method (fp32 weights, gradients, optimizer state), in the
markdown and HTML reports. Records are built from runner lines (no program runs)."""

from __future__ import annotations

import dataclasses

import pytest

from edgerun.report import TRAINING_MEMORY_HEADER, render, training_bound_bytes, training_memory_rows
from edgerun.runtime.record import EvalPoint, TrainingMetrics

from .conftest import HOST_INFO, analyse_lines, manifest, runner_lines


@pytest.mark.parametrize("method,optimizer,momentum,trainable,frozen,per_trained,per_frozen", [
    ("full", "adamw", 0.0, 1000, 0, 16, 4),      # w, g, m, v
    ("full", "sgd", 0.0, 1000, 0, 8, 4),         # w, g
    ("full", "sgd", 0.9, 1000, 0, 12, 4),        # w, g, momentum
    ("full", "sgd", 0.0, 600, 400, 8, 4),        # --freeze: the frozen part holds its weights alone
    ("lora", "adamw", 0.0, 30, 1000, 16, 4),     # adapters trained by AdamW over a frozen fp32 base
    ("mezo", "mezo-sgd", 0.0, 1000, 0, 4, 4),    # zeroth-order: the weights, no gradient or state
    ("zo-lora", "sgd", 0.0, 30, 1000, 4, 4),
])
def test_the_textbook_bound_counts_weights_gradients_and_optimizer_state(method, optimizer, momentum, trainable,
                                                                         frozen, per_trained, per_frozen):
    got = training_bound_bytes(method, optimizer, trainable=trainable, frozen=frozen, momentum=momentum)
    assert got == per_trained * trainable + per_frozen * frozen


def test_a_quantized_frozen_base_costs_its_bits():
    fp32 = training_bound_bytes("lora", "adamw", trainable=30, frozen=1000)
    int4 = training_bound_bytes("lora", "adamw", trainable=30, frozen=1000, base_bits=4)
    assert fp32 - int4 == 1000 * (4 - 0.5)


def _train_record(method: str, optimizer: str, trainable: int, frozen: int, peak_kb: int, *, run: int):
    rec = analyse_lines(runner_lines([5_000_000] * 5, peak_rss_kb=peak_kb), manifest(name="tinyllm"), HOST_INFO,
                        run_id=f"r-20261206-{run:06x}")
    training = TrainingMetrics(
        method=method, optimizer=optimizer, lr=1e-3, steps=5, start_step=0, batch=4, grad_accum=1,
        trainable=trainable, frozen=frozen, trainable_bytes=4 * trainable, optimizer_state_bytes=0,
        train_samples=64, eval_samples=4, loss_curve=((1, 7.0), (5, 6.5)), steps_per_s=12.5,
        eval=(EvalPoint("before", 0, 4, loss=7.0).with_perplexity(), EvalPoint("after", 5, 4, loss=6.5).with_perplexity()))
    return dataclasses.replace(rec, training=training)


def test_rows_give_peak_per_parameter_beside_the_bound_and_the_held_out_perplexity():
    full = _train_record("full", "adamw", 100_000, 0, peak_kb=4000, run=1)
    lora = _train_record("lora", "adamw", 3_000, 100_000, peak_kb=2500, run=2)
    rows = training_memory_rows([full, lora])
    assert [r[0] for r in rows] == [full.run_id, lora.run_id] and all(len(r) == len(TRAINING_MEMORY_HEADER) for r in rows)
    col = {name: i for i, name in enumerate(TRAINING_MEMORY_HEADER)}
    for rec, row in zip((full, lora), rows):
        t = rec.training
        total = t.trainable + t.frozen
        assert row[col["trained / all parameters"]] == f"{t.trainable:,} / {total:,}"
        assert float(row[col["B/param"]]) == pytest.approx(rec.memory.peak_rss_bytes / total, abs=0.05)
        bound = training_bound_bytes(t.method, t.optimizer, trainable=t.trainable, frozen=t.frozen)
        assert float(row[col["textbook B/param"]]) == pytest.approx(bound / total, abs=0.05)
        assert row[col["peak / textbook"]] == f"{rec.memory.peak_rss_bytes / bound:.2f}×"
        assert row[col["held-out"]] == (f"ppl {t.eval_before.perplexity:.2f} → ppl {t.eval_after.perplexity:.2f}")
    assert float(rows[0][col["textbook B/param"]]) == 16.0  # full AdamW
    for fmt in ("md", "html"):
        text = render([full, lora], fmt, [])
        assert "Fine-tuning memory" in text and "textbook B/param" in text and lora.run_id in text


def test_reports_without_training_runs_have_no_memory_table():
    rec = analyse_lines(runner_lines([5_000_000] * 5), manifest(), HOST_INFO, run_id="r-20261206-0000ff")
    assert training_memory_rows([rec]) == []
    assert "Fine-tuning memory" not in render([rec], "md", [])
