"""``edgerun finetune``: fine-tuning on the device with the native runner."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import DebugOpt, JsonOpt, SafeConsole, execute, plain, progress
from .profile_cmd import DeviceOpt, InventoryOpt, _device_list
from .results_cmd import StoreOpt, record_json

out = SafeConsole()


class StepPrinter:
    """Shows the loss as the device trains (the runner's step/eval lines, where the transport streams)."""

    def __init__(self, status, every: int) -> None:
        from edgerun.runtime.protocol import LineParser

        self.status, self.every, self.lines = status, max(1, every), LineParser()

    def __call__(self, chunk: bytes) -> None:
        from edgerun.runtime.protocol import EvalLine, StepLine

        for line in self.lines.feed(chunk):
            if isinstance(line, StepLine) and line.step % self.every == 0:
                self.status.update(f"step {line.step}: loss {line.loss:.4f}, lr {line.lr:.3g}")
            elif isinstance(line, EvalLine):
                acc = line.accuracy
                self.status.update(f"eval ({plain(line.when)}, step {line.step}): loss {line.loss:.4f}"
                                   + (f", accuracy {acc:.1%}" if acc is not None else ""))


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune_cmd(
        model: Annotated[str, typer.Argument(help="Zoo classifier (e.g. digits_cnn), 'package.module:factory', or an "
                                                  "LLM: smollm2-135m or path/to/model.gguf (trained on --data FILE.txt)")],
        device: DeviceOpt = "local://",
        method: Annotated[str, typer.Option(
            help="full (backprop: loss, gradients and the optimizer in the runner) | lora (low-rank adapters on "
                 "the linear layers, the rest frozen; merged back for --export-to) | mezo (zeroth-order: two "
                 "forward passes per step on an inference program, no gradients or optimizer state: training at "
                 "inference memory) | zo-lora (zeroth-order on LoRA adapters, the base frozen in the program) | "
                 "qlora (LoRA over a base quantized to --base-bits, dequantized inside the forward). "
                 "Default: lora for an LLM, full for a classifier.")] = None,
        rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
        base_bits: Annotated[int, typer.Option(
            help="qlora: the frozen base's weights as 4 (int4, groups of 32, two a byte) or 8 (int8 per "
                 "output channel) bits.")] = 4,
        lora_alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha (default: the rank).")] = None,
        lora_targets: Annotated[Optional[list[str]], typer.Option(
            help="LoRA: adapt linear layers whose name contains this (repeatable; default all).")] = None,
        zo_eps: Annotated[float, typer.Option(
            "--zo-eps", "--mezo-eps", help="mezo, zo-lora: the perturbation scale.")] = 1e-3,
        zo_samples: Annotated[int, typer.Option(
            help="mezo, zo-lora: random directions averaged per step (each costs two forward passes).")] = 1,
        zo_noise: Annotated[str, typer.Option(
            help="mezo, zo-lora: gaussian (MeZO's) | rademacher (+-1, SPSA's: no libm, cheaper per step).")] = "gaussian",
        data: Annotated[Optional[Path], typer.Option(
            help="Classifiers: .npz with x_train, y_train (and x_eval, y_eval); default: the model's own dataset. "
                 "LLMs: a UTF-8 text file (default: the held-out text edgerun ships), its last 10 % held out.")] = None,
        seq_len: Annotated[int, typer.Option(help="LLMs: tokens per training sequence.")] = 32,
        data_on_device: Annotated[Optional[str], typer.Option(
            help="A directory on the device with x_train.npy, y_train.npy (x_eval.npy, y_eval.npy): the data "
                 "never leaves the device.")] = None,
        steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 200,
        batch: Annotated[int, typer.Option(help="Samples per batch (the program is exported for it).")] = 16,
        lr: Annotated[Optional[float], typer.Option(
            help="Learning rate. Default: classifiers 0.01; LLMs 2e-3 with lora, 1e-4 with full, 1e-6 with mezo, "
                 "1e-4 with zo-lora.")] = None,
        optimizer: Annotated[Optional[str], typer.Option(
            help="sgd | adamw. Default: sgd (momentum 0.9) for a classifier, adamw for an LLM.")] = None,
        momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
        weight_decay: Annotated[float, typer.Option(help="SGD: L2; AdamW: decoupled.")] = 0.0,
        grad_accum: Annotated[int, typer.Option(help="Batches per optimizer step.")] = 1,
        lr_schedule: Annotated[str, typer.Option(help="constant | cosine.")] = "constant",
        warmup_steps: Annotated[int, typer.Option(help="Linear learning-rate warm-up steps.")] = 0,
        eval_every: Annotated[int, typer.Option(help="Also evaluate every E steps (0: before and after).")] = 0,
        checkpoint_every: Annotated[int, typer.Option(help="Write a checkpoint every K steps (0: at the end).")] = 0,
        resume: Annotated[Optional[Path], typer.Option(help="checkpoint.bin of an earlier run to go on from.")] = None,
        freeze: Annotated[Optional[list[str]], typer.Option(
            help="Parameter-name prefix not to train (repeatable), e.g. features.")] = None,
        export_to: Annotated[Optional[Path], typer.Option(
            help="Export the fine-tuned model here (verified against eager PyTorch with the trained weights).")] = None,
        target: Annotated[str, typer.Option(help="--export-to: the target.")] = "host",
        scheme: Annotated[str, typer.Option(help="--export-to: the scheme.")] = "fp32",
        max_context: Annotated[Optional[int], typer.Option(
            help="--export-to of an LLM: the exported program's context (KV-cache length; default: the "
                 "export's, 512 or the model's trained length).")] = None,
        seed: Annotated[int, typer.Option(help="Data order seed.")] = 0,
        threads: Annotated[int, typer.Option(help="Runner threads (0: default).")] = 0,
        timeout: Annotated[float, typer.Option(help="Seconds allowed for the training run.")] = 3600,
        store: StoreOpt = None,
        inventory: InventoryOpt = None,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Fine-tune MODEL on a device: the native runner trains there (no Python, no torch on the device).

        Exports a training program (loss, gradients and the optimizer run in the runner), sends it with
        the data (or uses --data-on-device), streams the loss, evaluates on held-out data on the device
        before and after, pulls the trained weights and a checkpoint, and stores a training record
        (`edgerun runs list`, `compare`, `report`). --export-to makes a verified inference artifact of
        the trained weights whose manifest names its lineage.
        """
        def work() -> dict:
            from edgerun.finetune import ZEROTH_ORDER, FinetuneSettings, finetune, training_defaults
            from edgerun.runtime.train import TrainRequest

            # every option is checked here, before any work: a bad one is exit 2 at once
            method_, optimizer_, lr_ = training_defaults(model, method, optimizer, lr)
            request = TrainRequest(steps=steps, lr=lr_, optimizer=optimizer_,
                                   momentum=momentum if optimizer_ == "sgd" and method_ not in ZEROTH_ORDER else 0.0,
                                   weight_decay=weight_decay, grad_accum=grad_accum, schedule=lr_schedule,
                                   warmup_steps=warmup_steps, eval_every=eval_every,
                                   checkpoint_every=checkpoint_every, seed=seed, threads=threads,
                                   mezo=method_ in ZEROTH_ORDER, mezo_eps=zo_eps, zo_samples=zo_samples,
                                   zo_noise=zo_noise)
            settings = FinetuneSettings(method=method_, base_bits=base_bits, batch=batch, freeze=tuple(freeze or ()), lora_rank=rank,
                                        lora_alpha=lora_alpha, lora_targets=tuple(lora_targets or ()),
                                        data=str(data) if data else None, data_on_device=data_on_device,
                                        resume=str(resume) if resume else None,
                                        export_to=str(export_to) if export_to else None, target=target,
                                        scheme=scheme, timeout_s=timeout, seq_len=seq_len,
                                        export_max_context=max_context)
            names = _device_list(device, False, inventory)
            with progress(f"finetune {model}") as status:
                res = finetune(model, names[0], request, settings, store_path=store, inventory=inventory,
                               on_stdout=StepPrinter(status, max(1, steps // 20)), on_progress=status.update)
            rec = res["record"]
            t = rec.training
            return {"run_id": rec.run_id, "device": rec.device_name, "source": rec.source,
                    "training": t.to_dict(),
                    "eval_before": t.eval_before.to_dict() if t.eval_before else None,
                    "eval_after": t.eval_after.to_dict() if t.eval_after else None,
                    "steps_per_s": t.steps_per_s, "peak_rss_bytes": rec.memory.peak_rss_bytes,
                    "agreement": res["agreement"], "program": res["program"].to_json(),
                    "run_dir": str(res["run_dir"]), "checkpoint": t.checkpoint,
                    "export": str(res["export"].dir) if res["export"] is not None else None,
                    "run": record_json(rec)}

        def human(r: dict) -> None:
            from edgerun.finetune import ZEROTH_ORDER
            from edgerun.runtime.columns import format_bytes

            t = r["training"]
            curve = t["loss_curve"]
            b, a = r["eval_before"], r["eval_after"]

            def ev(e):
                if not e:
                    return "—"
                acc, ppl = e.get("accuracy"), e.get("perplexity")
                return (f"loss {e['loss']:.4f}" + (f", perplexity {ppl:.2f}" if ppl is not None else "")
                        + (f", accuracy {acc:.1%}" if acc is not None else ""))

            how = plain(t["method"])
            if t["method"] == "qlora":
                how += f" on an int{base_bits} base"
            if t["method"] in ZEROTH_ORDER:
                how += f", eps {zo_eps:g}, {zo_samples} {zo_noise} direction{'s' if zo_samples > 1 else ''} a step"
            out.print(f"[bold]{plain(model)}[/] fine-tuned ({how}, {plain(t['optimizer'])}, lr {t['lr']:g}) "
                      f"on {plain(r['device'])}{' (emulated)' if r['source'] == 'emulated' else ''}: "
                      f"{t['steps']} steps of {t['batch']}", highlight=False)
            if curve:
                out.print(f"  training loss {curve[0][1]:.4f} → {curve[-1][1]:.4f}", highlight=False)
            out.print(f"  held-out on the device: before {ev(b)}; after {ev(a)}", highlight=False)
            if r["agreement"]:
                g = r["agreement"]
                what = (f"loss {g['eager_loss']:.4f}" if "eager_loss" in g else f"accuracy {g['eager_accuracy']:.1%}")
                out.print(f"  the pulled weights in eager PyTorch: held-out {what} "
                          f"({'agrees' if g['agrees'] else '[red]DISAGREES[/]'} with the device)", highlight=False)
            sps = r["steps_per_s"]
            out.print(f"  {'—' if sps is None else f'{sps:.1f}'} steps/s; trainable {t['trainable']:,} parameters "
                      f"({format_bytes(t['trainable_bytes'])}), optimizer state {format_bytes(t['optimizer_state_bytes'])}, "
                      f"peak RSS {format_bytes(r['peak_rss_bytes'])}", highlight=False)
            out.print(f"  run {plain(r['run_id'])}; checkpoint {plain(r['checkpoint'])}", highlight=False)
            if r["export"]:
                out.print(f"  inference artifact: {plain(r['export'])}", highlight=False)

        execute(work, json_out=json_out, debug=debug, human=human)
