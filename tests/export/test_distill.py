"""``distill`` (issue 22): a teacher -> student distillation on the host that recovers what a prune/factorize step
cost. The checks measure the recovery themselves, on inputs the step never trained on: the distilled *program*
(run by ExecuTorch) is closer to the teacher than the factorised model it started from, and the same for a tiny
LLM's held-out text; distill with nothing before it to recover is refused."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgerun.core.errors import UsageError
from edgerun.export import RECIPES, ExportError, export_model, parse_recipe
from edgerun.export.compression import LowRank, lowrank_linears
from edgerun.export.distill import Distill, kl_divergence
from edgerun.export.recipes import RecipeChain, RecipeContext, Samples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llm"))   # tests/llm/tiny.py


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the machine is shared, and two threads spinning on two busy cores made a tiny model's
    step 30x slower here. The checks are of function, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _kl(teacher_logits, student_logits) -> float:
    """KL(teacher || student) per row, from scratch (float64), to check the handler's own figure against."""
    p = torch.softmax(torch.as_tensor(teacher_logits).double(), -1)
    q = torch.softmax(torch.as_tensor(student_logits).double(), -1)
    return float((p * (p.log() - q.log())).sum(-1).mean())


# ------------------------------------------------------------------------------------------ recipe text
def test_distill_is_a_registered_distill_step_with_every_option_in_the_hash():
    assert RECIPES["distill"] is Distill and Distill.kind == "distill"
    chain = parse_recipe("lowrank(8)+distill(50)+int8")
    assert chain.spec == "lowrank:rank=8+distill:steps=50+int8"
    assert [name for name, _ in chain.stages()] == ["factorize", "distill", "quantize"]
    texts = ["lowrank:rank=8+distill", "lowrank:rank=8+distill:steps=20", "lowrank:rank=8+distill:lr=0.001",
             "lowrank:rank=8+distill:temperature=4", "lowrank:rank=8+distill:alpha=0.5", "lowrank:rank=8+distill:seed=1",
             "lowrank:rank=8+distill:batch=4", "lowrank:rank=8+distill:seq_len=32"]
    assert len({parse_recipe(t).recipe_hash for t in texts}) == len(texts)


@pytest.mark.parametrize("text,words", [
    ("distill", ["distill step distill comes before any prune or factorize step", "nothing to recover",
                 "lowrank:rank=32+distill+int8"]),
    ("distill(20)+lowrank(8)+int8", ["comes before any prune or factorize step"]),
    ("lowrank(8)+int8+distill", ["quantize step int8", "must come last"]),
    ("lowrank(8)+distill:steps=0", ["steps must be an integer >= 1"]),
    ("lowrank(8)+distill:lr=-1", ["lr must be a finite number > 0"]),
    ("lowrank(8)+distill:alpha=-0.5", ["alpha must be a finite number >= 0"]),
])
def test_a_distill_step_with_nothing_to_recover_or_a_bad_option_is_refused(text, words):
    with pytest.raises(UsageError) as info:
        parse_recipe(text)
    out = info.value.paragraph()
    assert all(w in out for w in words), out


def test_the_handler_refuses_without_a_teacher():
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 3))
    ctx = RecipeContext(module=model, example=(torch.randn(1, 4),), target=None, flavour="model",
                        calibration=lambda n: [(torch.randn(1, 4),) for _ in range(n)])
    with pytest.raises(ExportError, match="has no teacher"):
        RecipeChain.run_step(Distill(steps=2), ctx)


def test_the_kl_is_the_definition():
    torch.manual_seed(0)
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    assert float(kl_divergence(a.double(), b.double())) == pytest.approx(_kl(a, b), rel=1e-9)
    assert float(kl_divergence(a, a)) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------- models
def test_lowrank_then_distill_exports_a_program_closer_to_the_teacher(tmp_path, cli):
    """factories:tiny, fc1 factorised at rank 4, then 60 distillation steps: the exported program (ExecuTorch)
    is nearer the original model on fresh inputs than the factorised model was -- measured here, not read off
    the facts -- and the facts' own before/after agree."""
    from executorch.runtime import Runtime
    from factories import tiny

    spec = "lowrank:rank=4+distill:batch=16:lr=0.003:steps=60"   # the canonical text: options sorted
    m = export_model("factories:tiny", "host", spec, tmp_path / "d")
    assert m.ok and m.scheme.recipe == spec
    lowrank, distill = m.scheme.steps
    assert (distill.name, distill.kind, distill.options["steps"]) == ("distill", "distill", 60)
    f = distill.facts
    assert f["steps"] == 60 and f["data"]["source"] == "generated" and f["data"]["batched"]
    assert f["heldout"]["source"].startswith("generated (seed") and f["heldout"]["samples"] > 0
    assert f["kl_heldout_after"] < f["kl_heldout_before"] and f["loss_last_tenth_mean"] < f["loss_first"]
    assert f["seconds"] > 0 and f["trained_parameters"] == lowrank.facts["parameters_after"]

    teacher, example = tiny()
    factorised = copy.deepcopy(teacher)
    lowrank_linears(factorised, LowRank(rank=4))            # the student before distillation (SVD: deterministic)
    x = torch.randn(64, *example[0].shape[1:], generator=torch.Generator().manual_seed(1234))
    method = Runtime.get().load_program(str(m.pte_path)).load_method("forward")
    program = np.concatenate([method.execute([x[i:i + 1]])[0].numpy() for i in range(len(x))])
    with torch.no_grad():
        t, s = teacher(x), factorised(x)
    before, after = _kl(t, s), _kl(t, program)
    assert after < 0.8 * before, (before, after)
    shown = " ".join(cli("inspect", str(tmp_path / "d"), env={"COLUMNS": "200"}).stdout.split())
    assert f"distill: 60 steps in {f['seconds']:.1f} s (host, eager)" in shown
    assert f"KL(teacher || student) on held-out {f['heldout']['source']}: {f['kl_heldout_before']:.4g} -> " in shown


def test_alpha_needs_labels():
    from torch import nn

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 4))
    ctx = RecipeContext(module=copy.deepcopy(teacher), example=(torch.randn(1, 8),), target=None, flavour="model",
                        teacher=teacher, calibration=lambda n: Samples([(torch.randn(1, 8),)] * n, "generated"))
    with pytest.raises(ExportError, match="no labelled training data"):
        RecipeChain.run_step(Distill(steps=2, alpha=0.5), ctx)


def test_a_calibration_file_without_held_out_inputs_has_its_last_fifth_held_back_and_labels_train_alpha():
    from torch import nn

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    student = copy.deepcopy(teacher)
    lowrank_linears(student, LowRank(rank=2))
    xs = [(torch.randn(1, 8),) for _ in range(20)]
    ctx = RecipeContext(module=student, example=xs[0], target=None, flavour="model", teacher=teacher,
                        calibration=lambda n: Samples(xs, "file:calib.npy"))
    f = RecipeChain.run_step(Distill(steps=5, batch=4), ctx).facts
    assert (f["data"]["samples"], f["heldout"]["samples"]) == (16, 4) and "its last 4" in f["heldout"]["source"]
    labels = torch.randint(0, 4, (20,))
    ctx = dataclasses.replace(ctx, labelled=lambda n: Samples(xs[:n], "train split", labels=labels[:n]),
                              heldout=lambda n: Samples([(torch.randn(1, 8),) for _ in range(5)], "test split"))
    f = RecipeChain.run_step(Distill(steps=5, batch=4, alpha=0.5), ctx).facts
    assert f["data"]["source"] == "train split" and "hard-label cross-entropy" in f["loss"]


def test_the_same_seed_trains_the_same_weights_and_no_inputs_is_refused():
    from torch import nn

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    student = copy.deepcopy(teacher)
    lowrank_linears(student, LowRank(rank=2))
    xs = [(torch.randn(1, 8),) for _ in range(32)]
    ctx = RecipeContext(module=student, example=xs[0], target=None, flavour="model", teacher=teacher,
                        calibration=lambda n: Samples(xs, "generated"), heldout=lambda n: Samples(xs[:4], "generated"))

    def weights(seed):
        out = RecipeChain.run_step(Distill(steps=10, batch=4, lr=1e-2, seed=seed), ctx).module
        return torch.cat([p.detach().reshape(-1) for p in out.parameters()])

    assert torch.equal(weights(0), weights(0)) and not torch.equal(weights(0), weights(1))
    with pytest.raises(ExportError, match="needs training inputs, and the export has 0"):
        RecipeChain.run_step(Distill(steps=2), dataclasses.replace(ctx, calibration=None))


# --------------------------------------------------------------------------------------------- LLMs
@pytest.fixture(scope="module")
def tiny_llm_gguf(tmp_path_factory):
    from tiny import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("distill") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_llm(tiny_llm_gguf):
    from edgerun.export.llm.gguf_model import load_llama
    from edgerun.export.llm.tokenizer import tokenizer_from_gguf

    model, g = load_llama(tiny_llm_gguf, max_context=48)
    tok, facts = tokenizer_from_gguf(g)
    return model, tok, facts


def _windows(tok, facts, name: str, t: int) -> Samples:
    from edgerun.export.llm.export import DATA
    from edgerun.export.llm.tokenizer import encode

    ids = encode(tok, facts, (DATA / name).read_text(), add_special=True, parse_special=False)
    return Samples([(torch.tensor([ids[i:i + t]]), torch.arange(len(ids[i:i + t]))) for i in range(0, len(ids), t)],
                   name)


def _heldout_kl(teacher, student, windows) -> float:
    with torch.no_grad():
        rows = [(teacher.forward_train(w[0])[0], student.forward_train(w[0])[0]) for w in windows]
    return _kl(torch.cat([a for a, _ in rows]), torch.cat([b for _, b in rows]))


def test_an_llm_factorised_then_distilled_is_nearer_its_teacher_on_held_out_text(tiny_llm):
    """The LLM handler on the tiny GGUF's model: every block's linears factorised at rank 8 (the student), then
    distilled on windows of the calibration text; the KL to the teacher on the held-out text (never trained on,
    and sharing no 16-token run with the calibration text) drops, measured here."""
    model, tok, facts = tiny_llm
    teacher = model
    student = copy.deepcopy(teacher)
    shrunk = lowrank_linears(student, LowRank(rank=8))
    assert shrunk["layers_factorised"] >= 8
    calib, held = _windows(tok, facts, "train.txt", 48), _windows(tok, facts, "heldout.txt", 48)
    ctx = RecipeContext(module=student, example=(), target=None, flavour="llm", teacher=teacher,
                        calibration=lambda n: Samples(calib[:n], "train.txt"), heldout=lambda n: Samples(held[:n], "heldout.txt"))
    before = _heldout_kl(teacher, student, held)
    result = RecipeChain.run_step(Distill(steps=40, lr=3e-3, batch=4, seq_len=32), ctx)
    after = _heldout_kl(teacher, result.module, held)
    assert after < 0.8 * before, (before, after)
    assert _heldout_kl(teacher, student, held) == pytest.approx(before)   # run_step trained a copy
    f = result.facts
    assert f["calibration_heldout_disjoint"] and f["calibration_heldout_shared_runs"]["count"] == 0
    assert f["data"] == {"source": "train.txt", "tokens": sum(w[0].shape[1] for w in calib), "window": 32}
    assert f["kl_heldout_before"] > f["kl_heldout_after"]
    ppl = f["perplexity_heldout"]
    assert ppl["teacher"] > 1 and ppl["before"] > 1 and ppl["after"] > 1


def test_the_llm_export_gives_distill_its_teacher_and_the_two_texts(tiny_llm_gguf):
    """The LLM export's own stages, up to the distill step (lowering a tiny LLM takes most of a minute here, and
    is what every other LLM export test checks): the teacher is the model before lowrank, the calibration windows
    are the calibration text and the held-out ones the text perplexity is scored on, and the step's eager
    perplexity equals the one the export measures after the last transform."""
    from edgerun.export import ExportOptions, get_model, get_target
    from edgerun.export.llm.export import _plan, llm_recipe_identity
    from edgerun.export.stages import Progress, Work

    spec, target = get_model(str(tiny_llm_gguf)), get_target("host")
    chain = parse_recipe("lowrank:ratio=0.25+distill:steps=30:lr=0.003:batch=4:seq_len=32")
    w = Work(spec=spec, target=target, chain=chain, options=ExportOptions(), limits=None, tmp=None, progress=Progress(),
             identity=llm_recipe_identity(spec, target, chain, max_context=48), max_context=48, step_facts={})
    stages = [s for s in _plan(chain).stages if s.name in ("load model", "reference", "factorize", "distill")]
    for st in stages:
        st.run(w)
    f = w.step_facts[1]
    assert f["data"]["tokens"] > 100 and f["heldout"]["source"].endswith("heldout.txt") and f["calibration_heldout_disjoint"]
    assert f["heldout"]["tokens"] == len(w.heldout) - 1          # every held-out id after the first is scored
    assert f["kl_heldout_after"] < 0.8 * f["kl_heldout_before"]
    # the teacher is the fp32 model the reference measured; after the step the export lets it go
    assert f["perplexity_heldout"]["teacher"] == pytest.approx(w.ppl_fp32, rel=1e-6) and w.teacher is None
    assert f["perplexity_heldout"]["after"] == pytest.approx(f["eager_perplexity"]["after"], rel=1e-6)
