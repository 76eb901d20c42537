"""The memory table of LLM fine-tuning (issue 21 item 3): what each method costs on the device's runner,
beside eager PyTorch doing the same method on the same data in its own process, and the textbook bound.

One command, for one model at one batch (default 4 sequences x 64 tokens), on this machine's runner:

    .venv/bin/python benchmarks/finetune_memory.py --tiny --steps 5            # the test suite's tiny GGUF
    .venv/bin/python benchmarks/finetune_memory.py --model smollm2-135m --steps 10 --save
    .venv/bin/python benchmarks/finetune_memory.py --model path/to/model.gguf --methods lora,mezo --json

Per method (full AdamW, full SGD, LoRA, QLoRA on an int8 and an int4 base, MeZO, ZO-LoRA; ``--methods``
picks), through ``edgerun.finetune.finetune`` on ``local://`` exactly as ``edgerun finetune`` runs it:

  trainable     parameters the method trains (the training program's count)
  peak RSS      the runner's VmHWM over the whole run (program load, data, evaluation and the steps)
  - inference   peak RSS minus the *inference program*'s peak RSS at the same batch: the same model's
                forward and next-token loss on a batch of B x T tokens, exported without a backward
                (fp32 weights as program constants, the training program's kernels), run once by the same
                runner (``--method forward`` on the benchmark's first training batch)
  B/param       peak RSS / every parameter of the trained model (base + adapters)
  bound         the textbook bytes per parameter: weights, gradients and optimizer state in fp32, no
                activations -- backprop 4 B per frozen parameter, 8 (w, g) + 8 for AdamW's m and v per
                trained one (full AdamW 16, full SGD 8, LoRA 4 + 16 per adapter parameter); QLoRA's
                base at --base-bits; zeroth-order 4 B per parameter (no gradient, no optimizer state)
  steps/s       optimizer steps over their wall time (the runner's clock between step lines, evaluations
                taken out: forwards, backward, optimizer update or perturbations -- what eager's steps/s
                times too; the record's execute-only figure is ``execute_steps_per_s`` in the JSON)
  ppl           held-out perplexity before -> after (computed on the device, whole batches of the
                last tenth of the text)
  train         the optimizer steps' own wall time (the runner's clock)
  wall          the run from the moment finetune starts it (deploy, data, evaluations, the steps, the
                weights pulled back), and the training program's export before it when it was not cached

Beside it, **eager PyTorch** in a subprocess of its own (this file's ``--eager-worker``): the same zoo
spec built the same way, the same token windows in the same order (no shuffle on either side), the same
optimizer, learning rate, betas and steps; MeZO and ZO-LoRA perturb with ``edgerun.runtime.zo`` (the
runner's float operations). Its peak RSS is the training phase's: the high-water mark is reset
(``/proc/self/clear_refs``) once the model is built and VmHWM read at the end, so the GGUF loader's
transient copies are not charged to eager training (``ru_maxrss``, the whole process, is in the JSON as
``process_peak_rss_bytes``; it cannot be reset once a thread has exited). Eager inference is the same forward
and loss under ``no_grad`` on one batch, measured the same way.

Methods edgerun refuses (a UsageError, or "not built") are rows that say so. Progress goes to stderr;
``--json`` prints the result as JSON, ``--save`` also writes it to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LORA_TARGETS = ("attention.wq", "attention.wv")   # what finetune adapts by default for an LLM
LORA_RANK = 8


@dataclasses.dataclass(frozen=True)
class Method:
    """One row: the edgerun method it runs, with which optimizer and learning rate (None: the LLM default
    of ``edgerun.finetune.training_defaults``), and how its textbook bound counts bytes."""

    key: str
    label: str
    method: str                  # edgerun's --method
    optimizer: str
    lr: float | None = None
    adapters: bool = False       # LoRA-style: the base frozen, adapters trained
    zeroth_order: bool = False
    base_bits: int = 32          # the frozen base's bits per weight (QLoRA)

    def bound_bytes(self, base: int, adapters: int) -> int:
        """The textbook bytes (``edgerun.report.training_bound_bytes``, the report's own): ``base`` parameters
        of the model, ``adapters`` the LoRA parameters finetune adds (counted only for an adapter method)."""
        from edgerun.report import training_bound_bytes

        trained, frozen = (adapters, base) if self.adapters else (base, 0)
        return training_bound_bytes(self.method, self.optimizer, trainable=trained, frozen=frozen,
                                    base_bits=self.base_bits)


METHODS = {m.key: m for m in (
    Method("full-adamw", "full AdamW", "full", "adamw"),
    # SGD at the full-AdamW default (1e-4) does not move an LLM in a few steps; 1e-2 does (issue 21's LoRA run)
    Method("full-sgd", "full SGD", "full", "sgd", lr=1e-2),
    Method("lora", f"LoRA r{LORA_RANK} (AdamW)", "lora", "adamw", adapters=True),
    Method("qlora-int8", f"QLoRA r{LORA_RANK}, int8 base", "qlora", "adamw", adapters=True, base_bits=8),
    Method("qlora", f"QLoRA r{LORA_RANK}, int4 base", "qlora", "adamw", adapters=True, base_bits=4),
    Method("mezo", "MeZO", "mezo", "sgd", zeroth_order=True),
    Method("zo-lora", f"ZO-LoRA r{LORA_RANK}", "zo-lora", "sgd", adapters=True, zeroth_order=True),
)}
DEFAULT_METHODS = ("full-adamw", "full-sgd", "lora", "qlora-int8", "qlora", "mezo", "zo-lora")
FALLBACK_LR = {"mezo": 1e-6, "zo-lora": 1e-4, "qlora": 2e-3, "qlora-int8": 2e-3}   # if edgerun has no default for it (yet)


def say(msg: str) -> None:
    print(f"[finetune_memory {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def learning_rate(model: str, m: Method, given: float | None) -> float:
    from edgerun.core.errors import UsageError
    from edgerun.finetune import training_defaults

    if given is not None:
        return given
    if m.lr is not None:
        return m.lr
    try:
        return training_defaults(model, m.method, m.optimizer)[2]
    except UsageError:
        return FALLBACK_LR[m.key]


# ------------------------------------------------------------------------------ the model and its data
def tiny_gguf(directory: Path | None = None) -> Path:
    """The test suite's tiny GGUF (tests/llm/tiny.py: 2 layers, d=64, a BPE trained on the shipped text, seeded
    weights), written once per version of tiny.py into ``directory`` (default: this benchmark's cache, so the
    training programs edgerun caches by the model's path are reused from run to run)."""
    import hashlib

    from edgerun.core.paths import cache_dir

    source = HERE.parent / "tests" / "llm" / "tiny.py"
    directory = directory or cache_dir("benchmarks", "finetune_memory")
    path = directory / f"tiny-{hashlib.sha256(source.read_bytes()).hexdigest()[:12]}.gguf"
    if path.is_file():
        return path
    sys.path.insert(0, str(source.parent))
    try:
        from tiny import write_tiny_gguf
    finally:
        sys.path.pop(0)
    tmp = path.with_suffix(".part.gguf")
    write_tiny_gguf(tmp)
    tmp.replace(path)
    return path


def text_arrays(model: str, batch: int, seq_len: int):
    """``(base model, arrays)``: the windows finetune itself trains and evaluates on (its own function)."""
    from edgerun.export.zoo import get_model
    from edgerun.finetune import FinetuneSettings, _text_data  # noqa: PLC2701 (finetune's own data, not a copy)

    net, arrays, _facts = _text_data(get_model(model), FinetuneSettings(method="full", batch=batch, seq_len=seq_len))
    return net, arrays


def parameter_counts(net) -> dict[str, int]:
    """Base parameters, and the LoRA adapters finetune would add (rank, targets as finetune's defaults)."""
    from edgerun.export.finetune import add_lora

    base = sum(p.numel() for p in net.parameters())
    lora, _ = add_lora(net, rank=LORA_RANK, targets=LORA_TARGETS)
    adapters = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    return {"base": int(base), "adapters": int(adapters)}


# ------------------------------------------------------------------------------ inference on the runner
def inference_program(model: str, net, batch: int, seq_len: int) -> Path:
    """The model's forward and next-token loss on [batch, seq_len] tokens without a backward, exported as
    the training program is (same loss wrapper, same graph rewrites, portable kernels); cached."""
    import hashlib

    import torch
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge

    from edgerun.core.paths import cache_dir
    from edgerun.export.finetune import _wrapper, replace_empty_permuted, split_addmm  # noqa: PLC2701
    from edgerun.export.recipe import _model_identity, tool_versions  # noqa: PLC2701
    from edgerun.export.zoo import get_model

    key = json.dumps({"model": _model_identity(get_model(model)), "batch": batch, "seq_len": seq_len,
                      "versions": tool_versions(), "v": 1}, sort_keys=True)
    out = cache_dir("benchmarks", "finetune_memory") / hashlib.sha256(key.encode()).hexdigest()[:16] / "forward.pte"
    if out.is_file():
        return out
    x = torch.zeros(batch, seq_len, dtype=torch.long)
    with torch.no_grad():
        ep = torch.export.export(_wrapper(net.eval()), (x, x.clone()), strict=True)
    split_addmm(ep)
    replace_empty_permuted(ep)
    program = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch(
        ExecutorchBackendConfig())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        program.write_to_file(f)
    tmp.replace(out)
    return out


def runner_inference(program: Path, arrays: dict, batch: int, threads: int, work: Path) -> dict:
    """One forward of the inference program on the first training batch; the runner's peak RSS."""
    from edgerun.runtime.build import host_arch
    from edgerun.runtime.deploy import bundle_for
    from edgerun.runtime.runner import run_local

    x, y = work / "infer_x.npy", work / "infer_y.npy"
    np.save(x, np.ascontiguousarray(arrays["x_train"][:batch], dtype=np.int64))
    np.save(y, np.ascontiguousarray(arrays["y_train"][:batch], dtype=np.int64))
    t0 = time.monotonic()
    res = run_local(bundle_for(host_arch()), program, [x, y], warmup=0, iterations=1, threads=threads)
    return {"peak_rss_bytes": res.peak_rss_kb * 1024 if res.peak_rss_kb is not None else None,
            "pte_bytes": program.stat().st_size, "execute_s": res.execute_ns[0] / 1e9 if res.execute_ns else None,
            "wall_s": time.monotonic() - t0}


# ------------------------------------------------------------------------------ fine-tuning on the runner
def runner_finetune(model: str, m: Method, lr: float, args, store: str | None) -> dict:
    """One method through ``edgerun.finetune.finetune`` on local://; a refused method is a row saying so."""
    from edgerun.core.errors import EdgerunError, UsageError
    from edgerun.finetune import FinetuneSettings, finetune
    from edgerun.runtime.train import TrainRequest

    t0 = time.monotonic()
    marks: dict[str, float] = {}   # finetune's progress messages by first word: when each phase began

    def progress(msg: str) -> None:
        marks.setdefault(msg.split(" ")[0], time.monotonic())
        say(f"  {m.key}: {msg}")

    from edgerun.runtime.protocol import EvalLine, LineParser, StepLine

    parser, every = LineParser(), max(1, args.steps // 10)

    def stdout(chunk: bytes) -> None:
        for line in parser.feed(chunk):
            if isinstance(line, StepLine) and (line.step % every == 0 or line.step == args.steps):
                say(f"  {m.key}: step {line.step}/{args.steps}: loss {line.loss:.4f}")
            elif isinstance(line, EvalLine):
                say(f"  {m.key}: held-out ({line.when}, step {line.step}): loss {line.loss:.4f}")

    try:
        request = TrainRequest(steps=args.steps, lr=lr, optimizer=m.optimizer, threads=args.threads, shuffle=False,
                               eval_every=args.eval_every)
        kw: dict[str, Any] = {"lora_targets": LORA_TARGETS, "lora_rank": LORA_RANK} if m.adapters else {}
        if m.base_bits != 32:  # QLoRA's --base-bits (its default, 4, is all a finetune without the setting does)
            if "base_bits" in {f.name for f in dataclasses.fields(FinetuneSettings)}:
                kw["base_bits"] = m.base_bits
            elif m.base_bits != 4:
                raise UsageError(f"finetune has no base_bits setting: a base of {m.base_bits} bits is not built.")
        settings = FinetuneSettings(method=m.method, batch=args.batch, seq_len=args.seq_len, **kw)
        res = finetune(model, "local://", request, settings, store_path=store,
                       on_progress=progress, on_stdout=stdout)
    except EdgerunError as exc:
        text = str(exc).split("\n")[0]
        refused = isinstance(exc, UsageError) or "not built" in text
        return {"status": "refused" if refused else "failed", "message": text, "wall_s": time.monotonic() - t0}
    r = res["record"]
    t = r.training
    before, after = t.eval_before, t.eval_after
    walls = step_walls(r)
    return {"status": "ok", "run_id": r.run_id, "method": t.method, "optimizer": t.optimizer, "lr": t.lr,
            "steps": t.steps, "trainable": t.trainable, "frozen": t.frozen,
            "optimizer_state_bytes": t.optimizer_state_bytes, "peak_rss_bytes": r.memory.peak_rss_bytes,
            "pte_bytes": r.memory.pte_bytes, "steps_per_s": len(walls) / sum(walls) if sum(walls) > 0 else None,
            "execute_steps_per_s": t.steps_per_s,
            "loss_curve": [v for _s, v in t.loss_curve],
            "ppl_before": before.perplexity if before else None, "ppl_after": after.perplexity if after else None,
            "eval_samples": after.samples if after else 0,
            "train_s": sum(walls), "step_wall_s": walls,
            "evals": [[e.step, e.perplexity] for e in t.eval if e.perplexity is not None],
            "wall_s": time.monotonic() - t0, "source": r.source,
            # the training program's export (0 when finetune found it cached) and the run from then on
            "export_s": marks["training"] - marks["exporting"] if {"training", "exporting"} <= marks.keys() else None,
            "run_s": time.monotonic() - marks["training"] if "training" in marks else None,
            "agreement": res.get("agreement")}


def step_walls(record) -> list[float]:
    """Each optimizer step's wall time in seconds: the runner's clock between step lines (the step's forwards,
    backward, optimizer update or perturbations; a held-out evaluation between steps is left out by the
    runner itself)."""
    return [(s.wall_ns or s.execute_ns) / 1e9 for s in record.samples]
    for text in lines:
        try:
            d = json.loads(text)
        except ValueError:
            continue
        if isinstance(d, dict) and d.get("type") == "eval" and d.get("when") == "during":
            step, ns = d.get("step"), d.get("execute_ns")
            if isinstance(step, int) and isinstance(ns, int) and 0 <= step < len(walls):
                walls[step] = max(0.0, walls[step] - ns / 1e9)
    return walls


# ------------------------------------------------------------------------------ eager PyTorch (own process)
def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0); False where it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    """``ru_maxrss`` of this process: the whole run's peak (a thread that exits folds the high-water mark of
    its time into it, which ``clear_refs`` does not reset)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _hwm_bytes() -> int | None:
    """VmHWM: the peak since the last :func:`_reset_peak`."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _step_progress(step: int, steps: int, loss: float) -> None:
    if step % max(1, steps // 10) == 0 or step == steps:
        print(f"{PROGRESS}step {step}/{steps}: loss {loss:.4f}", file=sys.stderr, flush=True)


def eager_worker(cfg: dict) -> dict:
    """Eager PyTorch doing ``cfg["method"]`` (a :data:`METHODS` key, or ``infer``) on the npz's windows: the
    model from the same spec, batches in file order, the runner's optimizer constants (AdamW betas 0.9,
    0.999, eps 1e-8, no weight decay), held-out loss on the device's whole batches."""
    import torch

    from edgerun.export.zoo import get_model
    from edgerun.finetune import eager_lm_loss

    torch.set_num_threads(max(1, cfg["threads"]))
    t_start = time.monotonic()
    with np.load(cfg["data"]) as z:
        arrays = {k: z[k] for k in z.files}
    B, steps = cfg["batch"], cfg["steps"]
    net, _example, _g = get_model(cfg["model"]).build_llm(max(2, cfg["seq_len"]))
    key = cfg["method"]
    m = METHODS.get(key)
    if m is not None and m.adapters:
        from edgerun.export.finetune import add_lora

        net, _ = add_lora(net, rank=LORA_RANK, targets=LORA_TARGETS)
        if m.base_bits != 32:  # the same quantized base as edgerun's QLoRA, dequantized in forward and backward
            from edgerun.export.finetune import freeze_linears

            freeze_linears(net, m.base_bits)
    elif m is not None:
        net.requires_grad_(True)
    import gc

    gc.collect()
    setup_peak = _maxrss_bytes()
    reset = _reset_peak()
    n_eval = (len(arrays.get("x_eval", ())) // B) * B
    out: dict[str, Any] = {"method": key, "setup_peak_rss_bytes": setup_peak, "peak_reset": reset,
                           "torch": torch.__version__, "threads": torch.get_num_threads()}
    if key == "infer":
        t0 = time.perf_counter()
        loss = eager_lm_loss(net, arrays["x_train"][:B], arrays["y_train"][:B])
        out.update(execute_s=time.perf_counter() - t0, loss=loss)
    else:
        params = [p for p in net.parameters() if p.requires_grad]
        out["trainable"] = int(sum(p.numel() for p in params))
        if n_eval:
            out["ppl_before"] = float(np.exp(eager_lm_loss(net, arrays["x_eval"][:n_eval], arrays["y_eval"][:n_eval])))
        per_epoch = len(arrays["x_train"]) // B

        def batch(k):
            s = (k % per_epoch) * B
            return (torch.from_numpy(np.ascontiguousarray(arrays["x_train"][s:s + B])),
                    torch.from_numpy(np.ascontiguousarray(arrays["y_train"][s:s + B])))

        def loss_of(x, y):
            logits = net.forward_train(x)
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

        evals: list[list[float]] = [[0, out["ppl_before"]]] if n_eval else []
        every = cfg.get("eval_every") or 0

        def after_step(step: int, loss: float) -> None:
            """Progress, and the held-out perplexity every ``eval_every`` steps (as the runner's --eval-every)."""
            _step_progress(step, steps, loss)
            if n_eval and every and step % every == 0 and step != steps:
                evals.append([step, float(np.exp(eager_lm_loss(net, arrays["x_eval"][:n_eval],
                                                               arrays["y_eval"][:n_eval])))])

        step_s, losses = [], []
        if m.zeroth_order:
            step_s, losses = _eager_zo(params, batch, loss_of, cfg, after_step)
        else:
            opt = (torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
                   if m.optimizer == "adamw" else torch.optim.SGD(params, lr=cfg["lr"], momentum=0.0))
            net.train()
            for k in range(steps):
                x, y = batch(k)
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss = loss_of(x, y)
                loss.backward()
                opt.step()
                step_s.append(time.perf_counter() - t0)
                losses.append(float(loss))
                after_step(k + 1, losses[-1])
        out.update(loss_curve=losses, steps=len(step_s), train_s=sum(step_s), step_wall_s=step_s,
                   steps_per_s=len(step_s) / sum(step_s) if sum(step_s) > 0 else None)
        if n_eval:
            out["ppl_after"] = float(np.exp(eager_lm_loss(net, arrays["x_eval"][:n_eval], arrays["y_eval"][:n_eval])))
            out["evals"] = [*evals, [len(step_s), out["ppl_after"]]]
    hwm = _hwm_bytes() if reset else None
    out["process_peak_rss_bytes"] = _maxrss_bytes()
    out["peak_rss_bytes"] = hwm if hwm is not None else out["process_peak_rss_bytes"]
    out["peak_is"] = "VmHWM since the model was built" if hwm is not None else "ru_maxrss of the whole process"
    out["wall_s"] = time.monotonic() - t_start
    return out


def _eager_zo(params, batch, loss_of, cfg, after_step) -> tuple[list[float], list[float]]:
    """The zeroth-order step in eager PyTorch with the runner's own rule (``edgerun.runtime.zo.step``: the
    same seeded perturbations, projected gradient and update, in numpy over the parameters' memory)."""
    import torch

    from edgerun.runtime import zo

    weights = [p.detach().numpy() for p in params]   # views: perturbing them perturbs the model
    step_s, losses = [], []
    with torch.no_grad():
        for k in range(cfg["steps"]):
            x, y = batch(k)
            t0 = time.perf_counter()
            loss, _g = zo.step(weights, lambda x=x, y=y: float(loss_of(x, y)), seed=cfg["seed"], step=k,
                               lr=cfg["lr"], eps=cfg["zo_eps"])
            step_s.append(time.perf_counter() - t0)
            losses.append(float(loss))
            after_step(k + 1, losses[-1])
    return step_s, losses


def eager_available(m: Method) -> str | None:
    """Why eager PyTorch cannot do ``m`` here, or None."""
    if m.base_bits != 32:
        try:
            from edgerun.export.finetune import freeze_linears  # noqa: F401
        except ImportError:
            return f"an int{m.base_bits}-base LoRA in eager PyTorch needs the quantized base of edgerun's QLoRA"
    if m.zeroth_order:
        try:
            from edgerun.runtime import zo
        except ImportError:
            zo = None
        if not callable(getattr(zo, "step", None)):
            return "waiting for edgerun.runtime.zo.step (the runner's zeroth-order step) to replay the same steps"
    return None


PROGRESS = "progress: "   # an eager worker's stderr lines that the parent shows


def run_eager(cfg: dict, timeout: float) -> dict:
    """:func:`eager_worker` in a fresh interpreter: its progress lines shown as they come, its result read
    from the file it writes (or a failure row with the last of its stderr)."""
    import collections
    import threading

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="finetune-memory-eager-") as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--eager-worker",
                                 json.dumps({**cfg, "out": str(out)})],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        tail: collections.deque = collections.deque(maxlen=20)
        try:
            for line in proc.stderr:
                if line.startswith(PROGRESS):
                    say(f"  eager {cfg['method']}: {line[len(PROGRESS):].rstrip()}")
                else:
                    tail.append(line.rstrip())
            code = proc.wait()
        finally:
            timer.cancel()
        if code != 0 or not out.is_file():
            why = (f"did not finish within {timeout:g} s (--timeout)" if time.monotonic() - t0 >= timeout
                   else f"exit {code}: {(list(tail) or ['no output'])[-1][:300]}")
            return {"status": "failed", "message": f"the eager worker {why}", "wall_s": time.monotonic() - t0}
        return {"status": "ok", **json.loads(out.read_text())}


# ------------------------------------------------------------------------------ the table
def ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def time_to(side: dict, target: float | None) -> dict | None:
    """When ``side``'s held-out perplexity first reached ``target``: the step and the steps' wall time up to it
    (evaluations excluded); ``{"step": None, ...}`` when it did not within the run."""
    evals, walls = side.get("evals") or [], side.get("step_wall_s") or []
    if target is None or not evals or side.get("status") != "ok":
        return None
    for step, ppl in evals:
        if ppl is not None and ppl <= target * (1 + 1e-9):
            return {"step": int(step), "train_s": float(sum(walls[:int(step)])), "target": target}
    return {"step": None, "train_s": None, "target": target, "best": min(p for _s, p in evals if p is not None)}


def derive(result: dict) -> dict:
    """Add every row's derived figures (bytes per parameter, minus inference, bound) and the goals."""
    inf_rt = result["inference"]["runner"].get("peak_rss_bytes")
    inf_eg = result["inference"]["eager"].get("peak_rss_bytes")
    counts = result["parameters"]
    for row in result["rows"]:
        m = METHODS[row["key"]]
        total = counts["base"] + (counts["adapters"] if m.adapters else 0)
        row["parameters"] = total
        row["bound_bytes"] = m.bound_bytes(counts["base"], counts["adapters"])
        row["bound_bytes_per_param"] = row["bound_bytes"] / total
        for side, inf in (("runner", inf_rt), ("eager", inf_eg)):
            r = row[side]
            if r.get("status") == "ok" and r.get("peak_rss_bytes"):
                r["bytes_per_param"] = r["peak_rss_bytes"] / total
                r["minus_inference_bytes"] = r["peak_rss_bytes"] - inf if inf else None
    by = {row["key"]: row for row in result["rows"]}
    lora = by.get("lora", {}).get("runner", {})
    target = lora.get("ppl_after") if lora.get("status") == "ok" else None
    result["target_ppl"] = target   # the held-out perplexity LoRA ends at: what the others are timed to
    for row in result["rows"]:
        for side in ("runner", "eager"):
            row[side]["to_target"] = time_to(row[side], target)

    def peak(key, side="runner"):
        r = by.get(key, {}).get(side, {})
        return r.get("peak_rss_bytes") if r.get("status") == "ok" else None

    goals = []
    for key in ("mezo", "zo-lora"):
        if key in by:
            goals.append({"goal": f"{key} peak / inference peak", "value": ratio(peak(key), inf_rt), "le": 1.15})
    for key, bound in (("lora", 0.7), ("qlora", 0.5)):
        if key in by and "full-adamw" in by:
            goals.append({"goal": f"{key} peak / full AdamW peak", "value": ratio(peak(key), peak("full-adamw")),
                          "le": bound})
    for row in result["rows"]:
        k = row["key"]
        goals.append({"goal": f"{k} peak: edgerun / eager", "value": ratio(peak(k), peak(k, "eager")), "le": 1.0})
        # not a goal: the same ratio with each side's inference peak (its fixed runtime: Python and torch) taken out
        goals.append({"goal": f"{k} peak - inference: edgerun / eager", "info": True, "value": ratio(
            row["runner"].get("minus_inference_bytes"), row["eager"].get("minus_inference_bytes"))})
        goals.append({"goal": f"{k} steps/s: edgerun / eager",
                      "value": ratio(row["runner"].get("steps_per_s"), row["eager"].get("steps_per_s")), "ge": 1.0})
    zo = (by.get("zo-lora", {}).get("runner") or {}).get("to_target") or {}
    if zo and lora.get("train_s"):
        goals.append({"goal": f"zo-lora time to LoRA's held-out ppl {target:.2f} / LoRA's {lora['steps']} steps",
                      "value": ratio(zo.get("train_s"), lora["train_s"]), "le": 20.0,
                      "note": None if zo.get("step") is not None else
                      f"not reached in {by['zo-lora']['runner'].get('steps')} steps (best {zo['best']:.2f})"})
    for g in goals:
        v = g["value"]
        g["met"] = None if v is None or g.get("info") else (v <= g["le"] if "le" in g else v >= g["ge"])
    result["goals"] = goals
    return result


def _mb(v) -> str:
    return "-" if v is None else f"{v / 1e6:,.1f} MB"


def _num(v, fmt="{:,.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def _ppl(r) -> str:
    return f"{_num(r.get('ppl_before'))} → {_num(r.get('ppl_after'))}" if r.get("ppl_after") is not None else "-"


def _to_target(r: dict) -> str:
    t = r.get("to_target")
    if not t:
        return "-"
    return "not reached" if t["step"] is None else f"{t['train_s']:.2f} s (step {t['step']})"


def _wall(r: dict) -> str:
    """The run's wall time, and the training program's export before it when there was one."""
    run = r.get("run_s") if r.get("run_s") is not None else r.get("wall_s")
    export = r.get("export_s")
    return _num(run, "{:.1f} s") + (f" (+{export:.0f} s export)" if export and export >= 1 else "")


def _table(header, rows) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def render(result: dict) -> str:
    s = result["settings"]
    inf = result["inference"]
    title = (f"# Fine-tuning memory: {result['model']} ({result['parameters']['base']:,} parameters), batch "
             f"{s['batch']} x {s['seq_len']} tokens, {s['steps']} steps, {s['threads']} thread(s), host runner")
    out = [title, ""]
    out.append(f"inference at the same batch: runner {_mb(inf['runner'].get('peak_rss_bytes'))} peak RSS "
               f"({inf['how']}); eager PyTorch {_mb(inf['eager'].get('peak_rss_bytes'))} (forward + loss, no_grad)")
    if result.get("target_ppl") is not None:
        out.append(f"to LoRA's ppl: the steps' wall time until the held-out perplexity first reaches LoRA's final "
                   f"{result['target_ppl']:.2f} (evaluated every {s.get('eval_every') or s['steps']} steps)")
    out.append("")
    rows = []
    for row in result["rows"]:
        r = row["runner"]
        bound = _num(row["bound_bytes_per_param"], "{:.1f}")
        if r.get("status") != "ok":
            rows.append([row["label"], *["-"] * 9, bound, f"{r.get('status')}: {r.get('message', '')[:100]}"])
            continue
        note = "emulated" if r.get("source") == "emulated" else ""
        rows.append([row["label"], f"{r['trainable']:,}", _mb(r["peak_rss_bytes"]), _mb(r.get("minus_inference_bytes")),
                     _num(r.get("bytes_per_param"), "{:.1f}"), _num(r.get("steps_per_s"), "{:.3g}"), _ppl(r),
                     _num(r.get("train_s"), "{:.2f} s"), _to_target(r), _wall(r), bound, note])
    out += ["## edgerun (the runner)", ""]
    out += _table(["method", "trainable", "peak RSS", "- inference", "B/param", "steps/s", "held-out ppl",
                   "train", "to LoRA's ppl", "wall", "bound B/param", "note"], rows)
    rows = []
    for row in result["rows"]:
        e = row["eager"]
        if e.get("status") != "ok":
            rows.append([row["label"], *["-"] * 9, f"{e.get('status')}: {e.get('message', '')[:100]}"])
            continue
        rows.append([row["label"], f"{e.get('trainable', 0):,}", _mb(e["peak_rss_bytes"]),
                     _mb(e.get("minus_inference_bytes")), _num(e.get("bytes_per_param"), "{:.1f}"),
                     _num(e.get("steps_per_s"), "{:.3g}"), _ppl(e), _num(e.get("train_s"), "{:.2f} s"),
                     _to_target(e), _mb(e.get("process_peak_rss_bytes")), ""])
    out += ["", (f"## eager PyTorch {result.get('torch', '')} (a process of its own per method; peak RSS from the "
                 "model built on, whole-process peak beside it)"), ""]
    out += _table(["method", "trainable", "peak RSS", "- inference", "B/param", "steps/s", "held-out ppl", "train",
                   "to LoRA's ppl", "process peak", "note"], rows)
    out += ["", "## goals (issue 21)", ""]
    for g in result["goals"]:
        if g["value"] is None:
            if g.get("note"):
                out.append(f"- {g['goal']}: {g['note']}")
            continue
        if g.get("info"):
            out.append(f"- {g['goal']}: {g['value']:.2f} (beside the goal above: each side's fixed runtime netted out)")
            continue
        op, bound = ("≤", g["le"]) if "le" in g else ("≥", g["ge"])
        verdict = "met" if g["met"] else f"missed by {abs(g['value'] / bound - 1) * 100:.0f} %"
        out.append(f"- {g['goal']}: {g['value']:.2f} (goal {op} {bound:g}): {verdict}")
    out += ["", *[f"warning: {w}" for w in result["warnings"]]]
    out.append(f"edgerun {result['edgerun']}, commit {result['git_commit']}; {result['created_at']}")
    return "\n".join(out)


# ------------------------------------------------------------------------------ the run
def benchmark(model: str, methods, args, store: str | None, on_row: Callable[[dict], None] | None = None) -> dict:
    """The table's result for ``model`` (a dict: the schema every printer reads; see :func:`render`)."""
    with tempfile.TemporaryDirectory(prefix="finetune-memory-") as tmp:
        return _benchmark(model, methods, args, store, Path(tmp), on_row)


def _benchmark(model: str, methods, args, store: str | None, work: Path, on_row) -> dict:
    from edgerun.core.version import edgerun_version
    from edgerun.runtime.analysis import edgerun_git_commit
    from edgerun.runtime.train import TrainRequest

    say(f"{model}: building the model and its windows of {args.seq_len + 1} tokens")
    net, arrays = text_arrays(model, args.batch, args.seq_len)
    counts = parameter_counts(net)
    data = work / "data.npz"
    np.savez(data, **arrays)
    warnings = []
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) * 0.5:
        warnings.append(f"load average {load:.1f} on {os.cpu_count()} CPUs: steps/s and wall times are the "
                        "machine's, not the method's (peak RSS is unaffected)")
    if counts["base"] < 10_000_000:
        warnings.append(f"a small model ({counts['base']:,} parameters): the runner's and Python's fixed memory "
                        "dominate peak RSS, so bytes per parameter say little; read the table for SmolLM2")
    if args.eager and any(METHODS[k].zeroth_order for k in methods):
        warnings.append("eager MeZO/ZO-LoRA replay the runner's steps with edgerun.runtime.zo (numpy, z drawn in "
                        "chunks of 2M float64): its steps/s is numpy's, not what a torch MeZO would do")
    say("inference program: export (cached) and one forward on the runner")
    program = inference_program(model, net, args.batch, args.seq_len)
    inference = {"how": "forward + next-token loss of the base model, no backward, fp32 weights as constants, "
                        "one run of the same runner on the first training batch",
                 "runner": runner_inference(program, arrays, args.batch, args.threads, work)}
    base_cfg = {"model": model, "data": str(data), "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps,
                "eval_every": args.eval_every,
                "threads": args.threads, "seed": TrainRequest().seed, "zo_eps": TrainRequest().mezo_eps}
    if args.eager:
        say("eager PyTorch: inference at the same batch")
        inference["eager"] = run_eager({**base_cfg, "method": "infer", "lr": 0.0}, args.timeout)
    else:
        inference["eager"] = {"status": "skipped"}
    rows = []
    for k, key in enumerate(methods, 1):
        m = METHODS[key]
        lr = learning_rate(model, m, args.lr)
        say(f"[{k}/{len(methods)}] {m.label}: edgerun ({args.steps} steps, lr {lr:g})")
        row = {"key": key, "label": m.label, "method": m.method, "optimizer": m.optimizer, "lr": lr,
               "runner": runner_finetune(model, m, lr, args, store)}
        why = eager_available(m) if args.eager else "skipped (--no-eager)"
        if why is None:
            say(f"[{k}/{len(methods)}] {m.label}: eager PyTorch")
            row["eager"] = run_eager({**base_cfg, "method": key, "lr": lr}, args.timeout)
        else:
            row["eager"] = {"status": "skipped" if not args.eager else "not built", "message": why}
        rows.append(row)
        if on_row:
            on_row(row)
    import torch

    result = {"benchmark": "finetune_memory", "model": model, "parameters": counts,
              "settings": {"batch": args.batch, "seq_len": args.seq_len, "steps": args.steps,
                           "eval_every": args.eval_every,
                           "threads": args.threads, "methods": list(methods), "shuffle": False},
              "inference": inference, "rows": rows, "warnings": warnings, "torch": torch.__version__,
              "edgerun": edgerun_version(), "git_commit": edgerun_git_commit(),
              "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "load_average": load}
    return derive(result)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="a zoo LLM (smollm2-135m) or a .gguf path")
    src.add_argument("--tiny", action="store_true", help="the test suite's tiny GGUF, written to a temp dir")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=0, metavar="N",
                    help="held-out perplexity every N steps on both sides: the time each method takes to reach "
                         "the perplexity LoRA ends at (default: before and after only)")
    ap.add_argument("--lr", type=float, default=None, help="one learning rate for every method (default: per method)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma-separated, of {', '.join(METHODS)} (default: all)")
    ap.add_argument("--no-eager", dest="eager", action="store_false", help="skip the eager PyTorch columns")
    ap.add_argument("--store", default=None, help="results store for the training records (default: edgerun's)")
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds for one eager worker")
    ap.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    ap.add_argument("--save", action="store_true", help="also write benchmarks/results/finetune_memory-<time>.json")
    ap.add_argument("--show", type=Path, default=None, metavar="FILE.json",
                    help="print the table of a saved result (--save, --json) and exit")
    ap.add_argument("--eager-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.eager_worker is None and args.show is None:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            ap.error(f"--methods: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(METHODS)}")
        args.methods = methods
        if not args.tiny and not args.model:
            ap.error("give --model NAME|FILE.gguf or --tiny")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.eager_worker is not None:
        cfg = json.loads(args.eager_worker)
        Path(cfg["out"]).write_text(json.dumps(eager_worker(cfg)))
        return 0
    if args.show is not None:
        print(render(json.loads(args.show.read_text())))
        return 0
    from edgerun.core.errors import EdgerunError

    try:
        model = str(tiny_gguf()) if args.tiny else args.model
        result = benchmark(model, args.methods, args, args.store)
    except EdgerunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    if args.tiny:
        result["model"] = "tiny GGUF (tests/llm/tiny.py)"
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"finetune_memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(result, indent=1))
        say(f"wrote {path}")
    print(json.dumps(result, indent=1) if args.json else render(result))
    failed = [r["key"] for r in result["rows"] if r["runner"].get("status") == "failed"
              or r["eager"].get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
