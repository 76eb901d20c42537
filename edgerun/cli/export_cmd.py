"""``edgerun export | inspect | models | targets``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from edgerun.runtime.columns import format_bytes

from . import options as opt
from ._common import DebugOpt, JsonOpt, SafeConsole, StageProgress, err_console, execute

out = SafeConsole()


def _fmt_num(x, fmt: str = "{:.2f}") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x == float("inf"):
        return "inf (exact)"
    return fmt.format(x)


MAX_VECTORS = 10_000


def _check_vectors(value: object) -> str:
    """``--vectors`` as the parser checks it: a count 1..MAX_VECTORS, or a .npy/.npz file name."""
    text = str(value).strip()
    if text.lstrip("+-").isdigit():
        opt.count(1, MAX_VECTORS, "a number of test vectors")(text)
        return text
    if not text.endswith((".npy", ".npz")):
        raise opt.BadValue(f"expected a count or a file of test inputs: {text!r} is neither a number of test "
                           "vectors nor a .npy/.npz file; give e.g. --vectors 8, or --vectors inputs.npz "
                           "(input_0, input_1 ... stacked on dim 0)")
    return text


def _vectors_option(value: str) -> tuple[int, str | None]:
    """``--vectors`` (already checked by :func:`_check_vectors`): a count, or a file of test inputs."""
    text = value.strip()
    if text.lstrip("+-").isdigit():
        return int(text), None
    return 4, text


def show_manifest(m) -> None:
    """Tables for a person: what the artifact is, its sizes and memory plan, delegated vs not."""
    colour = {"ok": "green", "failed": "red"}.get(m.status, "yellow")
    out.print(f"[bold]{escape(m.model.name)}[/] for [bold]{escape(m.target.name)}[/] "
              f"({escape(m.target.description or '')}), scheme [bold]{escape(m.scheme.spec)}[/] "
              f"— status [{colour}]{escape(m.status)}[/]   {escape(str(m.path or ''))}")

    t = Table(title="Artifact", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    if m.data_bytes is None:
        t.add_row(".pte size", format_bytes(m.pte_bytes))
    else:
        t.add_row("program size", f"{format_bytes(m.program_bytes)} (.pte {format_bytes(m.pte_bytes)}, "
                  f"data file {escape(m.files['data'])} {format_bytes(m.data_bytes)})")
    t.add_row("fp32 weights (eager)", format_bytes(m.model.fp32_weight_bytes))
    t.add_row("parameters", f"{m.model.parameters or 0:,}")
    t.add_row("planned memory (program buffers)", format_bytes(m.planned_memory_bytes) + " (the program's own "
              "activations and I/O; a delegate's workspace, e.g. XNNPACK's, is not counted: see peak RSS)")
    t.add_row("recipe hash", f"{m.scheme.recipe_hash} (scheme) / {m.recipe_hash} (export)")
    t.add_row("versions", escape(", ".join(f"{k} {v}" for k, v in m.versions.items())))
    for spec in m.inputs:
        t.add_row(f"input {escape(spec.name)}", f"{spec.dtype}{list(spec.shape)}")
    for spec in m.outputs:
        t.add_row(f"output {escape(spec.name)}", f"{spec.dtype}{list(spec.shape)}")
    ds = m.dataset
    if ds:
        t.add_row("held-out split", escape(f"{ds.samples} samples of {ds.name}: {ds.inputs}, {ds.labels} "
                                           "(profile runs it on the device for task accuracy)"))
    if m.export_seconds is not None:
        t.add_row("export time", f"{m.export_seconds:.1f} s")
    g = m.graph or {}
    if "nodes" in g:
        tops = ", ".join(f"{x['module']} {x['nodes']}" for x in g.get("top_modules", [])[:3])
        t.add_row("graph", escape(f"{g['nodes']} operator nodes after decomposition ({g.get('exported_nodes')} after "
                                  f"torch.export); most from {tops}"))
    layers = m.scheme.facts.get("layers") if m.scheme.facts else None
    if layers:
        share = m.scheme.facts.get("quantized_share")
        rows = "; ".join(f"{k} {v['quantized']}/{v['layers']}" for k, v in layers.items())
        t.add_row("quantized layers", escape(f"{rows}" + (f" ({share:.0%} of the parameters)" if share is not None
                                                            else "")))
    for step in m.scheme.steps or ():
        f = step.facts or {}
        if step.kind != "quantize" and "parameters_before" in f:   # what a prune/factorize step did
            t.add_row(escape(step.name), escape(_shrink_text(f)))
    rep = m.compiler_report
    if rep is not None:   # the NPU compiler's own figures (Vela): estimates, never measurements
        t.add_row(f"{escape(rep.compiler)} {escape(rep.version)} (ESTIMATE)", escape(
            f"{rep.cycles_total:,} cycles ({rep.cycles_npu:,} NPU) = {rep.inference_seconds * 1e3:.4g} ms at "
            f"{rep.clock_hz / 1e6:g} MHz; SRAM {rep.sram_bytes / 1024:.1f} KiB, off-chip flash "
            f"{rep.off_chip_flash_bytes / 1024:.1f} KiB, DRAM {rep.dram_bytes / 1024:.1f} KiB; {rep.nn_macs:,} MACs; "
            f"{rep.npu_layers} of {rep.npu_layers + rep.cpu_layers} layers on the NPU in {rep.partitions} "
            f"partition(s); {rep.accelerator}, {rep.system_config}, {rep.memory_mode}"))
    out.print(t)
    show_steps(m)
    if m.llm is not None:
        show_llm_facts(m)
    for w in m.warnings:
        out.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)

    t = Table(title="Operators (calls in the program)", title_justify="left")
    t.add_column("operator / delegate")
    t.add_column("where")
    t.add_column("calls", justify="right")
    for name, n in m.operators.delegated.items():
        t.add_row(escape(name), "[green]delegated[/]", str(n))
    for name, n in m.operators.non_delegated.items():
        t.add_row(escape(name), "[yellow]portable/optimized kernel[/]", str(n))
    out.print(t)

    v = m.verification
    if v:
        t = Table(title=escape(f"Verification against eager PyTorch ({v.runtime})"), title_justify="left")
        for col in ("output", "shape", "SNR dB", "max abs", "cosine", "top-1 agree", "vectors"):
            t.add_column(col, justify="right")
        for row in v.outputs:
            t.add_row(str(row.index), str(list(row.shape)), _fmt_num(row.snr_db, "{:.1f}"),
                      _fmt_num(row.max_abs, "{:.3g}"), _fmt_num(row.cosine, "{:.5f}"),
                      _fmt_num(row.top1_agreement), str(row.vectors or ""))
        out.print(t)
        acc = v.task_accuracy
        if acc:
            shrunk = [st.name for st in m.scheme.steps or () if st.kind != "quantize"]
            eager = f"eager fp32 after {'+'.join(shrunk)}" if shrunk else "eager fp32"
            out.print(f"Task accuracy on {acc.samples} held-out samples: {eager} {acc.eager_fp32:.2%}, "
                      f"program {acc.program:.2%} ({acc.delta_pp:+.2f} pp)")
        for failure in v.failures:
            out.print(f"[red]FAILED[/] {escape(failure)}")


def show_llm_facts(m) -> None:
    """An LLM artifact's table: how long a conversation fits (max context) and what that costs (the KV
    cache), its perplexity at export, and the tokenizer it ships."""
    llm = m.llm
    t = Table(title="LLM", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    trained = f"; trained for {llm.context_length:,}" if llm.context_length else ""
    t.add_row("max context", f"{llm.max_context:,} positions (prompt + generated tokens at most{trained}; "
                             "edgerun export … --max-context N for another)")
    t.add_row("KV cache", f"{format_bytes(llm.kv_cache_bytes)} at max context ({llm.kv_cache_bytes:,} bytes; "
                          f"{llm.kv_cache_bytes_per_token:,} bytes a position: keys and values of {llm.layers} "
                          f"layers × {llm.kv_heads} KV heads, fp32)")
    from edgerun.export.llm.gguf_model import CACHE_POSITIONS

    attends = "the tokens in context" if any(s.name == CACHE_POSITIONS for s in m.inputs) else \
        "the whole max context (an artifact of program layout 2: export again for the valid prefix only)"
    t.add_row("attention", f"over {attends} each step")
    t.add_row("model", escape(f"{llm.architecture} {llm.name}: {llm.parameters:,} parameters, {llm.layers} layers, "
                              f"dim {llm.dim}, {llm.heads} heads ({llm.kv_heads} KV), vocabulary {llm.vocab_size:,}"))
    ppl = llm.quality.perplexity
    if ppl is not None:
        quant = f", eager after the recipe {ppl.eager_quantized:.3f}" if ppl.eager_quantized is not None else ""
        t.add_row("perplexity", escape(f"program {ppl.program:.3f} vs eager fp32 {ppl.eager_fp32:.3f} "
                                       f"({ppl.program_vs_eager_fp32:+.1%}){quant}; {ppl.tokens:,} tokens of "
                                       f"{ppl.text} in windows of {ppl.window}"))
    else:
        t.add_row("perplexity", "not measured at export")
    ref = llm.quality.llamacpp
    if ref is not None:
        eager = f", eager fp32 {ref.eager_fp32:.3f}" if ref.eager_fp32 is not None else ""
        bos = ", BOS first" if ref.bos_replaces_first else ""
        t.add_row("vs llama.cpp", escape(
            f"perplexity: program {ref.program:.3f}{eager}, llama.cpp (same GGUF, {ref.gguf_type}) {ref.ppl:.3f} "
            f"(program {ref.program / ref.ppl - 1:+.2%}); llama-perplexity's chunks: {ref.chunks} of {ref.ctx} "
            f"ids{bos}, second halves scored ({ref.scored:,} ids); llama-cpp-python {ref.llama_cpp_python}"))
    tok = llm.tokenizer
    bits = [tok.kind or "unknown kind"]
    if tok.pre_tokenizer:
        bits.append(f"pre-tokenizer {tok.pre_tokenizer}")
    if tok.vocab_size:
        bits.append(f"{tok.vocab_size:,} tokens")
    bits.append(f"BOS {tok.bos_id if tok.bos_id is not None else '-'}{' (added)' if tok.add_bos else ''}, "
                f"EOS {tok.eos_id if tok.eos_id is not None else '-'}")
    bits.append("chat template" if tok.chat_template else "no chat template")
    t.add_row("tokenizer", escape(f"{tok.file}: " + ", ".join(bits)))
    out.print(t)


def _change(before, after, fmt=lambda x: f"{x:,}") -> str:
    if before is None or after is None:
        return "-"
    if before == after:
        return fmt(before)
    return f"{fmt(before)} -> {fmt(after)}" + (f" ({after / before - 1:+.0%})" if before else "")


def show_steps(m) -> None:
    """What each prune/factorize step did, per layer type (parameters and FLOPs before/after, measured at export),
    the rank it chose per factorised layer, and what a sparsify step's zeros bought in compressed size."""
    from edgerun.export.layer_stats import read_change

    for step in m.scheme.steps or ():
        f = step.facts or {}
        if step.kind == "quantize" or not f:
            continue
        try:
            change = read_change(f)
        except ValueError as exc:   # a hand-edited manifest: say so, show the rest
            out.print(f"[yellow]warning:[/] step {escape(step.name)}: its layer counts are unreadable ({escape(str(exc))})")
            change = None
        if change is not None:
            before, after = change
            t = Table(title=escape(f"{step.name} ({step.kind}) per layer type"), title_justify="left",
                      caption="FLOPs of one forward on the example", caption_justify="left")
            for col in ("layer type", "layers", "parameters", "FLOPs"):
                t.add_column(col, justify="left" if col == "layer type" else "right")
            for kind in sorted(set(before.by_type) | set(after.by_type)):
                b, a = before.by_type.get(kind), after.by_type.get(kind)
                t.add_row(escape(kind), _change(b.layers if b else 0, a.layers if a else 0),
                          _change(b.parameters if b else 0, a.parameters if a else 0),
                          _change(b.flops if b else 0, a.flops if a else 0))
            t.add_row("[bold]all[/]", "", _change(before.parameters, after.parameters),
                      _change(before.flops, after.flops))
            out.print(t)
            for x in (before, after):
                if x.error:
                    out.print(f"  FLOPs not counted: {escape(x.error)}")
        ranks = f.get("factorised")
        if isinstance(ranks, list) and ranks:
            shown = "; ".join(f"{d.get('layer')} {d.get('out')}x{d.get('in')} -> rank {d.get('rank')}"
                              + (f" ({d['energy_kept']:.1%} energy)" if isinstance(d.get("energy_kept"), (int, float))
                                 else "") for d in ranks[:40] if isinstance(d, dict))
            more = f" (and {len(ranks) - 40} more)" if len(ranks) > 40 else ""
            out.print(escape(f"  rank chosen per layer: {shown}{more}"), soft_wrap=True, highlight=False)
        if "zeros" in f and "weights" in f:
            text = f"  zeros: {f['zeros']:,} of {f['weights']:,} weights ({f.get('sparsity', 0):.0%})"
            if f.get("program_bytes") and f.get("program_compressed_bytes") is not None:
                text += (f"; program {format_bytes(f['program_bytes'])}, compressed ({f.get('compressor', '?')}) "
                         f"{format_bytes(f['program_compressed_bytes'])}")
            if f.get("weights_compressed_before") and f.get("weights_compressed_after") is not None:
                text += (f"; fp32 weights compressed {format_bytes(f['weights_compressed_before'])} -> "
                         f"{format_bytes(f['weights_compressed_after'])}")
            if f.get("speed"):
                text += f"; {f['speed']}"
            out.print(escape(text), soft_wrap=True, highlight=False)
        if step.kind == "distill":
            out.print(escape(f"{step.name}: {_distill_text(f)}"), soft_wrap=True, highlight=False)


def _distill_text(f: dict) -> str:
    """A distill step's facts in a line: steps and time, loss, and the held-out figures before -> after."""
    num = lambda k, d=f: d.get(k) if isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool) else None  # noqa: E731
    parts = []
    if num("steps") is not None:
        parts.append(f"{num('steps')} steps" + (f" in {num('seconds'):.1f} s" if num("seconds") is not None else "")
                     + (" (host, eager)" if f.get("where") else ""))
    if num("loss_first") is not None and num("loss_last") is not None:
        parts.append(f"loss {num('loss_first'):.4g} -> {num('loss_last'):.4g}")
    held = f.get("heldout") if isinstance(f.get("heldout"), dict) else {}
    if num("kl_heldout_before") is not None and num("kl_heldout_after") is not None:
        parts.append(f"KL(teacher || student) on held-out {held.get('source', 'data')}: "
                     f"{num('kl_heldout_before'):.4g} -> {num('kl_heldout_after'):.4g}")
    ppl = f.get("perplexity_heldout") if isinstance(f.get("perplexity_heldout"), dict) else {}
    if num("before", ppl) is not None and num("after", ppl) is not None:
        parts.append(f"held-out perplexity {num('before', ppl):.4g} -> {num('after', ppl):.4g}"
                     + (f" (teacher {num('teacher', ppl):.4g})" if num("teacher", ppl) is not None else ""))
    acc = f.get("eager_accuracy") if isinstance(f.get("eager_accuracy"), dict) else {}
    if num("before", acc) is not None and num("after", acc) is not None:
        parts.append(f"eager accuracy {num('before', acc):.2%} -> {num('after', acc):.2%}")
    if f.get("calibration_heldout_disjoint") is False:
        parts.append("the calibration and held-out texts overlap")
    return "; ".join(parts) or "no facts"


def _shrink_text(f: dict) -> str:
    done = next((f[k] for k in ("layers_pruned", "layers_factorised") if k in f), None)
    before, after = f["parameters_before"], f["parameters_after"]
    text = (f"{done} layers changed, {f.get('layers_skipped', 0)} skipped; parameters {before:,} -> {after:,} "
            f"({after / before - 1:+.1%})" if before else f"parameters {before:,} -> {after:,}")
    acc = f.get("eager_accuracy")
    if acc:
        text += f"; eager accuracy {acc['before']:.2%} -> {acc['after']:.2%}"
    return text + (f"; {f['speed']}" if f.get("speed") else "")


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        model: Annotated[str, typer.Argument(help="Zoo model name (see `edgerun models`) or 'package.module:factory'.")],
        target: Annotated[str, typer.Option("--target", "-t", help="Target (see `edgerun targets`).")] = "host",
        scheme: Annotated[Optional[str], typer.Option("--recipe", "--scheme", "-s",
                          help="A recipe (--scheme is the same option): fp32 | int8 | int8-dynamic | 8da4w, options "
                               "in parentheses or as name:key=value (8da4w(group_size=64) = 8da4w:group_size=64), "
                               "steps joined by + (prune-channels(0.25)+int8, lowrank:rank=32+8da4w, "
                               "sparsify(0.5)+int8; default: the target's default).")] = None,
        output: Annotated[Optional[Path], typer.Option("--output", "-o",
                          help="Artifact directory (default: artifacts/MODEL-TARGET-SCHEME).")] = None,
        calibration: Annotated[Optional[Path], typer.Option(
            "--calibration", help="Calibration inputs: .npy [N, *input_shape] or .npz with input_0, input_1 ...")] = None,
        calibration_samples: Annotated[Optional[int], typer.Option(
            parser=opt.count(1, 100_000), help="int8: how many calibration samples (dataset or generated).")] = None,
        group_size: Annotated[Optional[int], typer.Option(
            parser=opt.count(1, 1 << 16), help="8da4w: weights per quantization group.")] = None,
        embedding_bits: Annotated[Optional[int], typer.Option(
            parser=lambda v: int(opt.choice(("4", "8"))(str(v).strip())),
            help="8da4w LLMs: bits of the token embedding table, 8 (default) or 4 (smaller, less accurate).")] = None,
        vectors: Annotated[str, typer.Option(
            parser=_check_vectors, help="How many test vectors to write and verify (the example input is vector 0, the rest are "
                 "generated), or FILE.npy/.npz of your own test inputs (like --calibration).")] = "4",
        min_snr_db: Annotated[Optional[float], typer.Option(
            parser=opt.real(-1000.0, 1000.0), help="Override the scheme's SNR threshold (dB).")] = None,
        min_cosine: Annotated[Optional[float], typer.Option(
            parser=opt.real(-1.0, 1.0), help="Override the scheme's cosine threshold.")] = None,
        min_top1: Annotated[Optional[float], typer.Option(
            parser=opt.real(0.0, 1.0), help="Also require this top-1 agreement (0..1) on classifier outputs.")] = None,
        max_context: Annotated[Optional[int], typer.Option(
            parser=opt.count(1, opt.MAX_TOKENS), help="LLMs: the KV cache length, i.e. prompt + generated tokens at most (default 512, a chat turn; "
                 "less when the model was trained for less). A step attends over the tokens in context, not "
                 "the max context, so a longer one costs memory (the KV cache), not speed.")] = None,
        overwrite: Annotated[bool, typer.Option(help="Replace an existing artifact at the output directory.")] = True,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Export MODEL to a verified ExecuTorch program for a target.

        Writes model.pte, model.etrecord, manifest.json and test vectors; the program is run with
        ExecuTorch's runtime on the test vectors and compared with eager PyTorch. A failed check
        keeps the artifact (marked failed) and exits with status 4.
        """

        def work() -> dict:
            from edgerun.export import ExportOptions, export_model

            count, vectors_file = _vectors_option(vectors)
            scheme_opts = {"calibration_samples": calibration_samples, "group_size": group_size,
                           "embedding_bits": embedding_bits}
            with err_console.status("exporting") as status:
                # one line per stage, also when stderr is a file or a pipe; a long stage's fraction as a
                # bar on a terminal, as a plain line every tenth when piped
                shown = StageProgress("export", status if err_console.is_terminal else None)

                def warned(text: str) -> None:
                    err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)

                manifest = export_model(
                    model, target, scheme, output,
                    scheme_options=scheme_opts, max_context=max_context,
                    options=ExportOptions(vectors=count, calibration=str(calibration) if calibration else None,
                                          vectors_file=vectors_file, overwrite=overwrite),
                    thresholds={"min_snr_db": min_snr_db, "min_cosine": min_cosine, "min_top1": min_top1},
                    on_stage=shown.started, on_stage_done=shown.done, on_progress=shown.fraction,
                    on_warning=warned,
                )
            return {"path": str(manifest.path), "manifest": manifest}

        execute(work, json_out=json_out, debug=debug, human=lambda r: show_manifest(r["manifest"]))

    @app.command("inspect")
    def inspect_cmd(
        artifact: Annotated[Path, typer.Argument(help="Artifact directory written by `edgerun export`.")],
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Show an artifact's manifest: sizes, memory plan, operators delegated or not, verification."""

        def work() -> dict:
            from edgerun.export import read_manifest

            manifest = read_manifest(artifact)
            manifest.check_program_signature()  # a manifest that contradicts its program is refused, not shown
            return {"path": str(artifact), "manifest": manifest}

        execute(work, json_out=json_out, debug=debug, human=lambda r: show_manifest(r["manifest"]))

    @app.command("models")
    def models_cmd(json_out: JsonOpt = False, debug: DebugOpt = False) -> None:
        """List the model zoo (user models: give 'package.module:factory' instead of a name)."""

        def work() -> dict:
            from edgerun.export import MODELS

            return {"models": [m.to_json() for m in MODELS.values()]}

        def human(r: dict) -> None:
            t = Table(title="Model zoo (weights: seeded random, or trained here)", title_justify="left")
            for col in ("name", "task", "description", "dataset"):
                t.add_column(col)
            for m in r["models"]:
                t.add_row(m["name"], m["task"], m["description"], m["dataset"] or "-")
            out.print(t)
            out.print("User models: edgerun export package.module:factory  (factory() -> (nn.Module, example_inputs))")

        execute(work, json_out=json_out, debug=debug, human=human)

    @app.command("targets")
    def targets_cmd(json_out: JsonOpt = False, debug: DebugOpt = False) -> None:
        """List targets, their CPU, backends and the schemes each allows."""

        def work() -> dict:
            from edgerun.export import SCHEMES, TARGETS

            return {"targets": [t.to_json() for t in TARGETS.values()],
                    "schemes": [{"name": s.name, "description": s.description} for s in SCHEMES.values()]}

        def human(r: dict) -> None:
            t = Table(title="Targets", title_justify="left")
            for col in ("name", "arch", "cpu", "backends", "default", "schemes"):
                t.add_column(col, no_wrap=col in ("name", "cpu"))
            for x in r["targets"]:
                t.add_row(x["name"], x["arch"], x["cpu"], ", ".join(x["backends"]) or x.get("lowering") or "(none)",
                          x["default_scheme"], " ".join(x["allowed_schemes"]))
            out.print(t)
            for x in r["targets"]:
                out.print(f"  [bold]{x['name']}[/]: {x['description']}", highlight=False)
            t = Table(title="Schemes", title_justify="left")
            t.add_column("name")
            t.add_column("description")
            for s in r["schemes"]:
                t.add_row(s["name"], s["description"])
            out.print(t)

        execute(work, json_out=json_out, debug=debug, human=human)
