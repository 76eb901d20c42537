"""``edgerun generate`` and ``edgerun bench-llm``: an LLM artifact on a device, token by token."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgerun.core.errors import UsageError
from edgerun.core.text import sanitize_text

from . import options as opt
from ._common import DebugOpt, JsonOpt, SafeConsole, err_console, execute, plain, progress
from .profile_cmd import DeviceOpt, InventoryOpt, _device_list
from .results_cmd import StoreOpt, record_json

out = SafeConsole()


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}.") from None
    if any(v < 0 for v in values):
        raise UsageError(f"{flag} takes integers >= 0, got {text!r}.")
    return values


def _threads_or_auto(value: object) -> int | str:
    """``auto`` or one thread count 0..MAX_THREADS (``edgerun generate --threads``)."""
    text = str(value).strip()
    return "auto" if text.lower() == "auto" else opt.threads(text)


def bench_rows(records) -> list[dict]:
    """llama-bench's table, one row per record: what ran, the test, tokens/s mean ± sd over repetitions."""
    rows = []
    for r in records:
        m = r.llm
        if m is None:
            continue
        rate, sd = ((m.decode_tokens_per_s, m.decode_tokens_per_s_sd) if m.test.startswith("tg")
                    else (m.prefill_tokens_per_s, m.prefill_tokens_per_s_sd))
        rows.append({"run_id": r.run_id, "model": r.model.name, "scheme": r.model.scheme,
                     "size_bytes": r.memory.pte_bytes, "device": r.device_name, "source": r.source,
                     "threads": r.provenance.threads, "test": m.test, "tokens_per_s": rate, "tokens_per_s_sd": sd,
                     "repetitions": m.repetitions, "ttft_ms": m.ttft_ms, "peak_rss_bytes": r.memory.peak_rss_bytes,
                     "kv_cache_bytes": m.kv_cache_bytes,
                     # the pool was chosen by the runner's --threads auto trial (provenance.threads_auto)
                     "threads_auto": r.provenance.threads_auto is not None,
                     "operators": operator_split(r) if r.operators is not None else None})
    return rows


def operator_split(record, top: int = 8) -> dict:
    """Where one forward of a profiled test goes (a decode step's for ``tgN``): the operator table with a
    kind of delegate call summed over its calls (one per layer) -- the top rows, the rest as one figure."""
    ops = record.operators
    rows = ops.grouped()
    shown = [{"name": o.name, "delegated": o.delegated, "backend": o.backend, "calls": o.count,
              "median_ms": o.median_ms, "share": o.share} for o in rows[:top]]
    rest = sum(o.median_ms for o in rows[top:])
    return {"rows": shown, "others_ms": rest, "others": len(rows) - len(shown), "op_sum_ms": ops.op_sum_ms,
            "coverage": ops.coverage, "iterations": ops.iterations}


def _split_text(row: dict) -> str:
    split = row["operators"]
    cov = f", {split['coverage']:.0%} of the runner's time" if split["coverage"] is not None else ""
    lines = [f"{row['test']} threads={row['threads']}: one forward {split['op_sum_ms']:.3f} ms over "
             f"{split['iterations']} forwards{cov} (all rows: edgerun runs show {row['run_id']})"]
    for o in split["rows"]:
        where = o["backend"] or "kernel"
        lines.append(f"  {o['share']:6.1%}  {o['median_ms']:8.3f} ms  {o['calls']:4d}x  "
                     f"{sanitize_text(o['name'])[:90]} ({sanitize_text(where)})")
    if split["others"]:
        lines.append(f"  {split['others_ms'] / split['op_sum_ms'] if split['op_sum_ms'] else 0:6.1%}  "
                     f"{split['others_ms']:8.3f} ms  {split['others']} other rows")
    return "\n".join(lines)


def _markdown(rows: list[dict]) -> str:
    from edgerun.runtime.columns import format_bytes

    head = ["model", "scheme", "size", "device", "threads", "test", "t/s", "peak RSS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if h in ("size", "threads", "t/s", "peak RSS")
                                                            else "---" for h in head) + "|"]
    for r in rows:
        rate = "—" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.2f} ± {r['tokens_per_s_sd'] or 0:.2f}"
        dev = r["device"] + (" (emulated)" if r["source"] == "emulated" else "")
        cells = [Path(str(r["model"])).name, r["scheme"], format_bytes(r["size_bytes"]), dev,
                 f"{r['threads']} (auto)" if r["threads_auto"] else r["threads"], r["test"], rate, format_bytes(r["peak_rss_bytes"])]
        lines.append("| " + " | ".join(sanitize_text(str(c)).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_cmd(
        artifact: Annotated[Path, typer.Argument(help="LLM artifact directory written by `edgerun export`.")],
        prompt: Annotated[str, typer.Option("--prompt", "-p", help="The prompt text (tokenised on this machine).")],
        device: DeviceOpt = "local://",
        chat: Annotated[bool, typer.Option(help="Wrap the prompt in the model's chat template (a user turn).")] = False,
        system: Annotated[Optional[str], typer.Option(help="With --chat: a system message.")] = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", parser=opt.tokens,
                                                    help="Stop after this many.")] = 64,
        temperature: Annotated[float, typer.Option(parser=opt.real(0.0, 100.0),
                                                   help="0: greedy; otherwise sample at this temperature.")] = 0.0,
        top_k: Annotated[int, typer.Option(parser=opt.count(0, 1 << 31),
                                           help="Sampling: keep the k most likely tokens (0: all).")] = 0,
        top_p: Annotated[float, typer.Option(parser=opt.real(0.0, 1.0, lo_open=True),
                                             help="Sampling: keep the smallest set with this probability.")] = 1.0,
        seed: Annotated[int, typer.Option(parser=opt.count(0, (1 << 63) - 1),
                                          help="Sampling seed (the same seed gives the same text).")] = 0,
        threads: Annotated[str, typer.Option(parser=_threads_or_auto,
                                             help="Runner threads; auto (default): the runner times a few decode "
                                                  "steps at 1 thread and every core and keeps the faster; 0: the "
                                                  "runtime's default.")] = "auto",
        stop_id: Annotated[Optional[list[int]], typer.Option(
            parser=opt.count(0, (1 << 31) - 1, "a token id"),
            help="Also stop at this token id (repeatable; EOS and end-of-turn tokens always stop).")] = None,
        timeout: Annotated[float, typer.Option(parser=opt.timeout,
                                               help="Seconds allowed for the run on the device.")] = 1800,
        store: StoreOpt = None,
        inventory: InventoryOpt = None,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Generate text with an LLM artifact on a device: the runner prefills the prompt and decodes there.

        The text is printed as tokens arrive where the transport streams (local, qemu, ssh, adb), then
        the timings: time to first token, prefill and decode tokens/s, peak RSS. The run is stored
        (`edgerun runs list`). --json prints one object with the text, the ids and the timings.
        """
        from edgerun.llm import GenerateSettings

        streamed = {"any": False}
        warned: list[str] = []

        def on_warning(text: str) -> None:  # before the run: a request that cannot fit the max context
            warned.append(text)
            err_console.print(f"[yellow]warning:[/] {plain(text)}", highlight=False)

        def on_text(text: str) -> None:
            streamed["any"] = True
            sys.stdout.write(sanitize_text(text))
            sys.stdout.flush()

        def work() -> dict:
            from edgerun.llm import generate

            settings = GenerateSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                        top_p=top_p, seed=seed, threads=threads, chat=chat, system=system,
                                        stop_ids=tuple(stop_id or ()), timeout_s=timeout)
            names = _device_list(device, False, inventory)
            if len(names) != 1:
                raise UsageError("generate runs on one device; give one --device.")
            record, ids = generate(artifact, names[0], prompt, settings, store_path=store, inventory=inventory,
                                   on_text=None if json_out else on_text, on_warning=on_warning)
            m = record.llm
            return {"run_id": record.run_id, "device": record.device_name, "source": record.source,
                    "prompt": prompt, "prompt_ids": ids, "text": m.text, "ids": list(m.ids), "stop": m.stop,
                    "ttft_ms": m.ttft_ms, "prefill_tokens_per_s": m.prefill_tokens_per_s,
                    "decode_tokens_per_s": m.decode_tokens_per_s, "peak_rss_bytes": record.memory.peak_rss_bytes,
                    "threads": record.provenance.threads, "threads_auto": record.provenance.threads_auto,
                    "warnings": warned, "run": record_json(record)}

        def human(r: dict) -> None:
            from edgerun.runtime.columns import format_bytes

            if not streamed["any"]:  # a transport that cannot stream (serial): the text at the end
                sys.stdout.write(sanitize_text(r["text"] or ""))
            sys.stdout.write("\n")
            dec = r["decode_tokens_per_s"]
            # an emulated run's figures are labelled before the first of them, not after the last
            label = "emulated (times check function, not speed): " if r["source"] == "emulated" else ""
            err_console.print(
                f"[dim]{label}{len(r['prompt_ids'])} prompt tokens, {len(r['ids'])} generated (stop: "
                f"{plain(r['stop'])}); first token {r['ttft_ms']:.1f} ms; prefill {r['prefill_tokens_per_s']:.1f} "
                f"tokens/s; decode {'—' if dec is None else f'{dec:.1f}'} tokens/s on {r['threads']} thread(s)"
                f"{' (chosen by --threads auto)' if r['threads_auto'] else ''}; peak RSS "
                f"{format_bytes(r['peak_rss_bytes'])}; run {plain(r['run_id'])}[/]", highlight=False)

        execute(work, json_out=json_out, debug=debug, human=human)

    @app.command("bench-llm")
    def bench_llm_cmd(
        artifact: Annotated[Path, typer.Argument(help="LLM artifact directory written by `edgerun export`.")],
        device: DeviceOpt = "local://",
        prompts: Annotated[str, typer.Option("-p", "--prompt-tokens", parser=opt.int_list(0, opt.MAX_TOKENS),
                                             help="Prefill tests: prompt lengths, e.g. 64,128 (ppP; 0: none).")] = "64",
        generate: Annotated[str, typer.Option("-n", "--gen-tokens", parser=opt.int_list(0, opt.MAX_TOKENS),
                                              help="Decode tests: tokens generated, e.g. 32,64 (tgN; 0: none).")] = "32",
        repetitions: Annotated[int, typer.Option("-r", "--repetitions", parser=opt.repetitions,
                                                 help="Timed repetitions per test.")] = 5,
        threads: Annotated[str, typer.Option("-t", "--threads", parser=opt.threads_list(),
                                             help="Thread counts, e.g. 1,2,4 (0: default), or auto: the runner "
                                                  "times a few decode steps at 1 thread and every core and keeps "
                                                  "the faster.")] = "0",
        warmup: Annotated[int, typer.Option(parser=opt.warmup, help="Untimed repetitions before each test.")] = 1,
        output: Annotated[str, typer.Option("--output", "-o", parser=opt.choice(("md", "csv")),
                                            help="Table format: md | csv (--json: JSON).")] = "md",
        timeout: Annotated[float, typer.Option(parser=opt.timeout,
                                               help="Seconds allowed for one test on a device.")] = 3600,
        profile: Annotated[bool, typer.Option("--profile", help="Also record an ETDump of each test and print "
                                              "where one forward's time goes (for tgN: a decode step), by "
                                              "operator and kind of delegate call; its tokens/s include the "
                                              "tracing.")] = False,
        store: StoreOpt = None,
        inventory: InventoryOpt = None,
        json_out: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """llama-bench-style numbers for an LLM artifact: prefill (ppP) and decode (tgN) tokens/s on devices.

        Each test runs with random token ids (no stop tokens), repeated -r times after a warm-up; the
        table gives tokens/s mean ± sd over repetitions from the runner's clock around execute. Every
        test is a stored run: compare two with `edgerun compare`, plot them with `edgerun report`.
        Devices run concurrently; tests and thread counts in turn on each. --profile adds the
        per-operator split of a forward (`edgerun runs show RUN` has every row).
        """
        def work() -> dict:
            from edgerun.llm import BenchLLMSettings, bench_llm
            from edgerun.cells import CellFailure
            from edgerun.profiling import parse_threads
            from edgerun.store import Store

            settings = BenchLLMSettings(prompts=tuple(p for p in _ints(prompts, "-p") if p),
                                        generate=tuple(n for n in _ints(generate, "-n") if n),
                                        repetitions=repetitions, threads=parse_threads(threads), warmup=warmup,
                                        timeout_s=timeout, profile=profile)
            names = _device_list(device, False, inventory)
            with Store(store) as s:
                store_path = s.path
            with progress("bench-llm") as status:
                results = bench_llm(artifact, names, settings, store_path=store_path, inventory=inventory,
                                    on_progress=status.update)
            records = [r for r in results if not isinstance(r, CellFailure)]
            failures = [r.to_json() for r in results if isinstance(r, CellFailure)]
            rows = bench_rows(records)
            result = {"rows": rows, "runs": [r.run_id for r in records], "failures": failures,
                      "table": _markdown(rows) if output == "md" else _csv(rows)}
            if failures:
                result["ok"] = False
                result["exit_code"] = max(f["error"].get("exit_code", 1) for f in failures)
            return result

        def human(r: dict) -> None:
            print(r["table"])
            for row in r["rows"]:
                if row.get("operators"):
                    print("\n" + _split_text(row))
            for f in r["failures"]:
                err_console.print(f"[bold red]failed[/] on {plain(f['device'])}: {plain(f['error']['message'])}",
                                  soft_wrap=True, highlight=False)

        execute(work, json_out=json_out, debug=debug, human=human)
