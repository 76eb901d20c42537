"""``distill`` (issue 22, kind ``distill``): a short teacher -> student knowledge distillation that recovers what
a prune or factorize step cost.

The **teacher** is the model as it was before the chain's first prune/factorize step (the export keeps it for
this step: :attr:`~.recipes.RecipeContext.teacher`); the **student** is the model after the steps before this
one. The student's parameters are trained with AdamW (``lr``, no weight decay: the pretrained weights are not
pulled toward zero) for ``steps`` steps of ``batch`` samples, drawn in a ``seed``-fixed order, on

    loss = temperature^2 * KL(softmax(teacher / temperature) || softmax(student / temperature)) + alpha * CE

(Hinton's scaling keeps the soft term's gradients the same size whatever the temperature); ``CE`` is the
hard-label cross-entropy (models with a labelled dataset) or the next-token loss of the window (LLMs), off by
default (``alpha=0``). Every floating-point output of a model is taken as logits over its last dimension.
Both models stay in eval mode (BatchNorm keeps its running statistics, dropout is off), so a run is
deterministic for a given seed and thread count.

Data. Models: the export's calibration inputs (``--calibration FILE``, else the dataset's training split,
else inputs generated like the example); ``alpha > 0`` needs labels, so the dataset's labelled training
split. LLMs: token windows (``seq_len`` long, random offsets) of the export's calibration text
(``export/llm/data/train.txt``). What is measured, before and after, is the teacher-student KL (temperature 1)
on **held-out** data the step never trains on -- the dataset's test split, or inputs generated with another
seed, or (a calibration file) its last fifth held back; for LLMs the held-out text the export's perplexity is
measured on, whose perplexity (student and teacher) is in the facts too. The LLM calibration and held-out ids
are checked to share no 16-token run (``calibration_heldout_disjoint``).

Why on the host, in eager PyTorch, and not on the device with the runner's train mode (:mod:`.finetune`): a
training program differentiates one model's loss against fixed labels; distillation needs the teacher run
beside the student at every step (its logits on the same batch), which the train mode does not do. The
device path for recovering quality is ``edgerun finetune`` (on data, against labels). The program exported
after this step is verified against the distilled model run eagerly, as after any prune/factorize step; for a
model with a dataset the export adds the eager task accuracy before and after this step.

A distill step comes after a prune or factorize step (before any, there is nothing to recover: the chain
refuses it) and before the quantize step (the chain's order rule).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, ClassVar

from .errors import ExportError
from .recipes import Recipe, RecipeContext, RecipeResult, recipe_handler
from .stages import report_progress

__all__ = ["Distill", "kl_divergence", "NGRAM"]

#: the LLM calibration and held-out ids share no run of this many tokens (checked, in the facts)
NGRAM = 16
#: models: at most this many training samples, and this many bytes of them, are held at once
MAX_SAMPLES = 1024
MAX_POOL_BYTES = 256 << 20
#: held-out samples the KL before/after is measured on, at most (models; an LLM's are its held-out text's windows)
HELDOUT_SAMPLES = 256


@dataclasses.dataclass(frozen=True)
class Distill(Recipe):
    """Teacher (the model before the first prune/factorize step) -> student distillation, on the host."""

    name: ClassVar[str] = "distill"
    kind: ClassVar[str] = "distill"
    description: ClassVar[str] = ("recover a prune/factorize step's loss: KL to the model before it, AdamW on the "
                                  "calibration data (host, eager)")
    uses_calibration: ClassVar[bool] = True
    positional: ClassVar[tuple[str, ...]] = ("steps",)        # distill(200)

    steps: int = 100
    lr: float = 1e-4
    batch: int = 8
    temperature: float = 2.0
    alpha: float = 0.0
    seed: int = 0
    seq_len: int = 64          # LLMs: tokens a training window has

    def __post_init__(self) -> None:
        for key, low in (("steps", 1), ("batch", 1), ("seq_len", 2), ("seed", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low} (e.g. distill:{key}={max(low, 8)}), got {value!r}")
        for key, positive in (("lr", True), ("temperature", True), ("alpha", False)):
            value = getattr(self, key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
                value > 0 if positive else value >= 0)
            if not ok:
                raise ValueError(f"{key} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


# ------------------------------------------------------------------------------------------ shared
def kl_divergence(teacher, student, temperature: float = 1.0):
    """Mean over every row (all dims but the last) of KL(softmax(teacher/T) || softmax(student/T))."""
    import torch

    lt = torch.log_softmax(teacher / temperature, dim=-1)
    ls = torch.log_softmax(student / temperature, dim=-1)
    return (lt.exp() * (lt - ls)).sum(-1).mean()


def _teacher(recipe: Distill, ctx: RecipeContext):
    if ctx.teacher is None:
        raise ExportError(f"recipe {recipe.spec} has no teacher: it distils the model before the chain's first prune "
                          "or factorize step into the model after it, and no such step came before it.",
                          stage="distill", hint="Put distill after a prune or factorize step: "
                                                "lowrank:rank=32+distill+int8.")
    return ctx.teacher


class _Trainable:
    """The student's floating-point parameters with gradients on for the step; their flags put back after."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.is_floating_point()]
        self.flags = [p.requires_grad for p in self.params]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(True)
        return self.params

    def __exit__(self, *exc):
        for p, flag in zip(self.params, self.flags):
            p.grad = None
            p.requires_grad_(flag)


def _train(recipe: Distill, student, batches, loss_fn, what: str) -> tuple[list[float], int]:
    """The loop: ``batches(step)`` -> a batch, ``loss_fn(batch)`` -> the loss. Returns (losses, parameters)."""
    import torch

    with _Trainable(student) as params, torch.enable_grad():
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
        losses: list[float] = []
        for step in range(recipe.steps):
            loss = loss_fn(batches(step))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ExportError(f"recipe {recipe.spec}: the distillation loss became {value} at step {step + 1} of "
                                  f"{recipe.steps} ({what}).", stage="distill",
                                  hint=f"Use a smaller learning rate than lr={recipe.lr:g}.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(value)
            report_progress(step + 1, recipe.steps, f"step {step + 1}/{recipe.steps}: loss {value:.4g}")
        n = int(sum(p.numel() for p in params))
    return losses, n


def _order(n: int, gen):
    """Sample indices, one permutation of ``range(n)`` after another (every sample once an epoch)."""
    import torch

    buf: list[int] = []

    def take(k: int):
        while len(buf) < k:
            buf.extend(torch.randperm(n, generator=gen).tolist())
        out = buf[:k]
        del buf[:k]
        return out

    return take


def _loss_facts(recipe: Distill, losses: list[float], trained: int, seconds: float) -> dict[str, Any]:
    tail = max(1, len(losses) // 10)
    return {"steps": recipe.steps, "batch": recipe.batch, "optimizer": "AdamW", "lr": recipe.lr, "weight_decay": 0.0,
            "temperature": recipe.temperature, "alpha": recipe.alpha, "seed": recipe.seed,
            "loss": "temperature^2 * KL(teacher || student) on softened logits" + (
                " + alpha * hard-label cross-entropy" if recipe.alpha else ""),
            "loss_first": round(losses[0], 6), "loss_last": round(losses[-1], 6),
            "loss_last_tenth_mean": round(sum(losses[-tail:]) / tail, 6), "trained_parameters": trained,
            "where": "host, eager PyTorch (the teacher runs beside the student; the device's train mode does not)",
            "seconds": round(seconds, 3)}


# ------------------------------------------------------------------------------------------ models
def _source(samples, default: str) -> str:
    return getattr(samples, "source", "") or default


def _floats(outputs) -> list:
    import torch
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(outputs)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]


class _Samples:
    """Input tuples as the model takes them: stacked on dim 0 and run a batch at a time when the model gives
    the same outputs that way (checked on the teacher), else one sample at a time."""

    def __init__(self, samples: list[tuple], teacher):
        import torch

        self.samples = samples
        self.batched = False
        if len(samples) >= 2 and all(t.dim() >= 1 and t.shape[0] == 1 for t in samples[0]):
            try:
                stacked = [torch.cat([s[i] for s in samples[:2]]) for i in range(len(samples[0]))]
                with torch.no_grad():
                    both = _floats(teacher(*stacked))
                    one = [_floats(teacher(*s)) for s in samples[:2]]
                self.batched = bool(both) and all(
                    b.shape[0] == 2 and all(torch.allclose(b[k:k + 1], one[k][j], rtol=1e-4, atol=1e-5) for k in range(2))
                    for j, b in enumerate(both))
            except Exception:  # a model that takes one sample only (a reshape to its example's shape)
                self.batched = False
        if self.batched:
            self.stacked = [torch.cat([s[i] for s in samples]) for i in range(len(samples[0]))]

    def __len__(self) -> int:
        return len(self.samples)

    def run(self, model, idx: list[int]) -> list:
        """The model's floating outputs for samples ``idx``, the samples on dim 0 (per-sample outputs stacked)."""
        import torch

        if self.batched:
            index = torch.tensor(idx)
            return _floats(model(*(t.index_select(0, index) for t in self.stacked)))
        outs = [_floats(model(*self.samples[i])) for i in idx]
        return [torch.stack(group) for group in zip(*outs)]


def _kl_outputs(t_outs: list, s_outs: list, temperature: float):
    return sum(kl_divergence(t.double() if temperature == 1.0 else t, s.double() if temperature == 1.0 else s,
                             temperature) for t, s in zip(t_outs, s_outs)) / len(t_outs)


def _heldout_kl(teacher, student, data: _Samples, chunk: int) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), chunk):
            idx = list(range(start, min(start + chunk, len(data))))
            total += float(_kl_outputs(data.run(teacher, idx), data.run(student, idx), 1.0)) * len(idx)
            count += len(idx)
    return total / count


def _pool_size(recipe: Distill, example: tuple) -> int:
    per_sample = max(1, sum(t.numel() * t.element_size() for t in example))
    return max(2, min(MAX_SAMPLES, recipe.steps * recipe.batch, MAX_POOL_BYTES // per_sample))


@recipe_handler(Distill)
def _distill_model(recipe: Distill, ctx: RecipeContext) -> RecipeResult:
    import torch

    teacher, student = _teacher(recipe, ctx), ctx.module
    started = time.monotonic()
    want = _pool_size(recipe, ctx.example)
    labels = None
    if recipe.alpha > 0:
        if ctx.labelled is None:
            raise ExportError(f"recipe {recipe.spec}: alpha={recipe.alpha:g} adds a hard-label loss, and this export has "
                              "no labelled training data (a model with a dataset has; a --calibration file or "
                              "generated inputs have no labels).", stage="distill",
                              hint="Use alpha=0 (the teacher's logits alone), or a model with a dataset.")
        train = ctx.labelled(want)
        labels = torch.as_tensor(train.labels).long().reshape(-1)
    else:
        train = ctx.calibration(want) if ctx.calibration is not None else []
    source = _source(train, "calibration inputs")
    train = list(train)
    if len(train) < 2:
        raise ExportError(f"recipe {recipe.spec} needs training inputs, and the export has {len(train)} "
                          "(it distils on the calibration inputs: --calibration FILE, a dataset's training split, or "
                          "inputs generated like the example).", stage="distill",
                          hint="Give --calibration FILE.npy (or .npz) with two or more samples.")
    heldout = ctx.heldout(HELDOUT_SAMPLES) if ctx.heldout is not None else None
    if heldout:
        held_source, heldout = _source(heldout, "held-out inputs"), list(heldout)
    else:  # no held-out inputs of their own (a calibration file): its last fifth is held back
        if len(train) < 5:
            raise ExportError(f"recipe {recipe.spec}: {len(train)} calibration samples are too few to hold some back "
                              "and measure the distillation on them.", stage="distill",
                              hint="Give a --calibration file with 5 or more samples.")
        cut = len(train) - max(1, len(train) // 5)
        train, heldout, held_source = train[:cut], train[cut:][:HELDOUT_SAMPLES], f"{source}, its last {len(train) - cut}"
        if labels is not None:
            labels = labels[:cut]
    data, held = _Samples(train, teacher), _Samples(heldout, teacher)
    if labels is not None and len(labels) != len(train):
        raise ExportError(f"recipe {recipe.spec}: {len(train)} training inputs but {len(labels)} labels.",
                          stage="distill")
    kl_before = _heldout_kl(teacher, student, held, recipe.batch)
    take = _order(len(data), torch.Generator().manual_seed(recipe.seed))
    temp = recipe.temperature

    def loss_fn(idx):
        with torch.no_grad():
            t_outs = data.run(teacher, idx)
        s_outs = data.run(student, idx)
        if not s_outs:
            raise ExportError(f"recipe {recipe.spec}: the model has no floating-point output to distil.",
                              stage="distill")
        loss = temp * temp * _kl_outputs(t_outs, s_outs, temp)
        if labels is not None:
            logits = s_outs[0].reshape(-1, s_outs[0].shape[-1])
            if logits.shape[0] != len(idx):
                raise ExportError(f"recipe {recipe.spec}: alpha needs one row of class logits a sample as the first "
                                  f"output; it has shape {list(s_outs[0].shape)} for {len(idx)} samples.",
                                  stage="distill", hint="Use alpha=0.")
            loss = loss + recipe.alpha * torch.nn.functional.cross_entropy(logits, labels[torch.tensor(idx)])
        return loss

    losses, trained = _train(recipe, student, lambda step: take(recipe.batch), loss_fn, f"{len(data)} samples")
    kl_after = _heldout_kl(teacher, student, held, recipe.batch)
    facts = _loss_facts(recipe, losses, trained, time.monotonic() - started)
    facts.update({"teacher": "the model before the chain's first prune/factorize step",
                  "data": {"source": source, "samples": len(data), "batched": data.batched},
                  "heldout": {"source": held_source, "samples": len(held)},
                  "kl_heldout_before": kl_before, "kl_heldout_after": kl_after})
    return RecipeResult(student, facts=facts)


# -------------------------------------------------------------------------------------------- LLMs
def _ids(samples: list | None, what: str, recipe: Distill) -> list[int]:
    """The text's ids back from its windows ``(tokens [1, T], ...)``, which follow each other in order."""
    if not samples:
        raise ExportError(f"recipe {recipe.spec} needs the export's {what} text, and it has none.", stage="distill")
    return [int(i) for s in samples for i in s[0].reshape(-1).tolist()]


def _shared_runs(a: list[int], b: list[int], n: int = NGRAM) -> int:
    runs = {tuple(a[i:i + n]) for i in range(len(a) - n + 1)}
    return sum(tuple(b[i:i + n]) in runs for i in range(len(b) - n + 1))


def _llm_eval(teacher, student, windows: list[list[int]]) -> dict[str, float]:
    """KL(teacher || student) per token (temperature 1) and both perplexities, over ``windows`` (each window's
    ids after the first scored from those before it, as the export's perplexity scores its windows)."""
    import torch

    kl, nll_s, nll_t, count = 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for w in windows:
            inp, target = torch.tensor([w[:-1]]), torch.tensor(w[1:])
            lt = torch.log_softmax(teacher.forward_train(inp)[0].double(), -1)
            ls = torch.log_softmax(student.forward_train(inp)[0].double(), -1)
            kl += float((lt.exp() * (lt - ls)).sum(-1).sum())
            rows = torch.arange(len(target))
            nll_s -= float(ls[rows, target].sum())
            nll_t -= float(lt[rows, target].sum())
            count += len(target)
    return {"kl": kl / count, "ppl_student": math.exp(nll_s / count), "ppl_teacher": math.exp(nll_t / count),
            "tokens": count}


@recipe_handler(Distill, llm=True)
def _distill_llm(recipe: Distill, ctx: RecipeContext) -> RecipeResult:
    import torch

    teacher, student = _teacher(recipe, ctx), ctx.module
    if not hasattr(student, "forward_train") or not hasattr(teacher, "forward_train"):
        raise ExportError(f"recipe {recipe.spec}: the LLM has no forward_train (whole windows without the KV cache), "
                          "which distillation runs.", stage="distill")
    started = time.monotonic()
    calib_samples = ctx.calibration(1 << 20) if ctx.calibration else None
    held_samples = ctx.heldout(1 << 20) if ctx.heldout else None
    calib, held = _ids(calib_samples, "calibration", recipe), _ids(held_samples, "held-out", recipe)
    windows = [[int(i) for i in s[0].reshape(-1).tolist()] for s in held_samples]
    windows = [w for w in windows if len(w) >= 2]
    t = min(recipe.seq_len, getattr(student, "max_context", recipe.seq_len), len(calib) - 1)
    if t < 2:
        raise ExportError(f"recipe {recipe.spec}: the calibration text is {len(calib)} tokens, too short for a window.",
                          stage="distill")
    shared = _shared_runs(calib, held)
    if shared:
        ctx.warn(f"distill: the calibration and held-out texts share {shared} runs of {NGRAM} tokens; the held-out "
                 "figures are not of unseen text")
    before = _llm_eval(teacher, student, windows)
    gen = torch.Generator().manual_seed(recipe.seed)
    starts = len(calib) - t   # a window is ids[s : s + t + 1] (inputs and next tokens)
    temp = recipe.temperature

    def batch(step):
        s = torch.randint(0, starts, (recipe.batch,), generator=gen).tolist()
        return torch.tensor([calib[i:i + t + 1] for i in s])

    def loss_fn(win):
        inp, target = win[:, :-1], win[:, 1:]
        with torch.no_grad():
            t_logits = teacher.forward_train(inp)
        s_logits = student.forward_train(inp)
        loss = temp * temp * kl_divergence(t_logits, s_logits, temp)
        if recipe.alpha:
            loss = loss + recipe.alpha * torch.nn.functional.cross_entropy(
                s_logits.reshape(-1, s_logits.shape[-1]), target.reshape(-1))
        return loss

    losses, trained = _train(recipe, student, batch, loss_fn, f"windows of {t} tokens")
    after = _llm_eval(teacher, student, windows)
    facts = _loss_facts(recipe, losses, trained, time.monotonic() - started)
    facts["loss"] = facts["loss"].replace("hard-label cross-entropy", "next-token cross-entropy")
    facts.update({"teacher": "the model before the chain's first prune/factorize step",
                  "data": {"source": _source(calib_samples, "calibration text"), "tokens": len(calib), "window": t},
                  "heldout": {"source": _source(held_samples, "held-out text"),
                              "tokens": before["tokens"], "windows": len(windows)},
                  "calibration_heldout_disjoint": shared == 0,
                  "calibration_heldout_shared_runs": {"tokens": NGRAM, "count": shared},
                  "kl_heldout_before": before["kl"], "kl_heldout_after": after["kl"],
                  "perplexity_heldout": {"teacher": before["ppl_teacher"], "before": before["ppl_student"],
                                         "after": after["ppl_student"]}})
    return RecipeResult(student, facts=facts)
