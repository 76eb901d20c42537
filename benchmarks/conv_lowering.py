"""Per-layer rule for convolutions: XNNPACK's own convolution, or patch extraction + a 1x1 GEMM?

The peer-benchmark issue saw k x k convolutions (k > 1) run slower than a 1x1 convolution of the
same work on one CPU, and asked for a lowering through the path that runs at parity *where measured
faster per layer on the target CPU class*. This benchmark is that measurement. For every distinct
convolution of a model (shape, kernel, stride, padding, groups == 1), it builds three single-layer
programs from the same weights and times them with edgerun's native runner, interleaved in shuffled
rounds, one thread:

  direct   the layer as it is: XNNPACK's convolution (indirect GEMM)
  im2col   pad, k*k shifted slices concatenated on channels, then one 1x1 convolution (a GEMM with
           K = k*k*C_in), all inside the delegate
  shifted  pad, then k*k 1x1 convolutions of the shifted slices, summed (no concatenation)

Only stride-1 layers can be rewritten this way inside XNNPACK (its slice has no step), so strided
layers are reported as direct only. The table gives each lowering's median and its ratio to direct;
the last line states the rule the measurements support for this CPU. On demand:

    .venv/bin/python benchmarks/conv_lowering.py                      # resnet18's convolutions
    .venv/bin/python benchmarks/conv_lowering.py --model mobilenet_v2 --rounds 7 --json

Results JSON (machine info included) goes to benchmarks/results/conv_lowering-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import random
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[conv_lowering] {msg}", file=sys.stderr, flush=True)


def _layers(model_name: str):
    """Distinct (conv module, input shape) pairs of a zoo model, found by a forward hook."""
    import torch

    from edgerun.export.zoo import get_model

    model, example = get_model(model_name).build()
    seen: dict[tuple, tuple] = {}

    def hook(mod, inputs, _out):
        x = inputs[0]
        key = (tuple(x.shape), mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.groups)
        if key not in seen and mod.groups == 1 and mod.dilation == (1, 1):
            seen[key] = (mod, tuple(x.shape))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(*example)
    for h in handles:
        h.remove()
    return list(seen.values())


def _variants(conv):
    import torch
    import torch.nn.functional as F
    from torch import nn

    w = conv.weight.detach()
    o, i, kh, kw = w.shape
    ph, pw = conv.padding
    bias = conv.bias.detach().clone() if conv.bias is not None else None

    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = conv

        def forward(self, x):
            return self.c(x)

    class Im2col(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(i * kh * kw, o, 1, bias=bias is not None)
            with torch.no_grad():
                self.c.weight.copy_(w.permute(0, 2, 3, 1).reshape(o, kh * kw * i, 1, 1))
                if bias is not None:
                    self.c.bias.copy_(bias)

        def forward(self, x):
            h, wd = x.shape[2] + 2 * ph - kh + 1, x.shape[3] + 2 * pw - kw + 1
            xp = F.pad(x, (pw, pw, ph, ph))
            return self.c(torch.cat([xp[:, :, a:a + h, b:b + wd] for a in range(kh) for b in range(kw)], 1))

    class Shifted(nn.Module):
        def __init__(self):
            super().__init__()
            self.cs = nn.ModuleList()
            for a in range(kh):
                for b in range(kw):
                    c = nn.Conv2d(i, o, 1, bias=False)
                    with torch.no_grad():
                        c.weight.copy_(w[:, :, a:a + 1, b:b + 1])
                    self.cs.append(c)
            self.register_buffer("b", bias.view(1, -1, 1, 1) if bias is not None else torch.zeros(1, o, 1, 1))

        def forward(self, x):
            h, wd = x.shape[2] + 2 * ph - kh + 1, x.shape[3] + 2 * pw - kw + 1
            xp = F.pad(x, (pw, pw, ph, ph))
            y = self.b
            k = 0
            for a in range(kh):
                for b in range(kw):
                    y = y + self.cs[k](xp[:, :, a:a + h, b:b + wd])
                    k += 1
            return y

    out = {"direct": Direct()}
    if conv.stride == (1, 1) and (kh, kw) != (1, 1):
        out["im2col"] = Im2col()
        out["shifted"] = Shifted()
    return out


def _program(module, x, path: Path, reference) -> Path:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module = module.eval()
    with torch.no_grad():
        got = module(x)
    err = (got - reference).abs().max().item()
    if err > 1e-3 * max(1.0, reference.abs().max().item()):
        raise RuntimeError(f"{path.name}: the rewritten layer disagrees with the convolution (max error {err:.3g})")
    prog = to_edge_transform_and_lower(torch.export.export(module, (x,)),
                                       partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(prog.buffer)
    return path


def _machine() -> dict:
    from edgerun.devices.info import speed_features

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), None)
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith(("flags", "Features"))), [])
    return {"cpu_model": model, "arch": platform.machine(), "features": list(speed_features(platform.machine(), flags))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18", help="zoo model whose convolutions to measure")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=20, help="timed iterations per run")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()

    import torch

    from edgerun.runtime.build import BuildRequest, build_bundle
    from edgerun.runtime.runner import RunOptions, run_local

    bundle = build_bundle(BuildRequest(arch="host"))
    work = Path(tempfile.mkdtemp(prefix="conv-lowering-"))
    cells = []  # (layer label, variant, pte, flops)
    torch.manual_seed(args.seed)
    for n, (conv, shape) in enumerate(_layers(args.model)):
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = conv(x)
        kh, kw = conv.kernel_size
        label = (f"{shape[1]}->{conv.out_channels} k{kh}x{kw} s{conv.stride[0]} @ {shape[2]}x{shape[3]}")
        flops = 2 * ref.numel() * shape[1] * kh * kw
        for name, mod in _variants(conv).items():
            cells.append((label, name, _program(mod, x, work / f"l{n}-{name}.pte", ref), flops))
        log(f"built {label}")
    rng = random.Random(args.seed)
    samples: dict[tuple, list[float]] = {(c[0], c[1]): [] for c in cells}
    opts = RunOptions(warmup=args.warmup, iterations=args.iterations, threads=1)
    for r in range(args.rounds):
        order = cells[:]
        rng.shuffle(order)
        for label, name, pte, _ in order:
            res = run_local(bundle, pte, [], options=opts)
            samples[(label, name)].append(statistics.median(res.execute_ns) / 1e6)
        log(f"round {r + 1}/{args.rounds} done")
    rows = []
    for label in dict.fromkeys(c[0] for c in cells):
        flops = next(c[3] for c in cells if c[0] == label)
        direct = statistics.median(samples[(label, "direct")])
        row = {"layer": label, "direct_ms": direct, "direct_gflops": flops / direct / 1e6}
        for name in ("im2col", "shifted"):
            if (label, name) in samples:
                ms = statistics.median(samples[(label, name)])
                row[f"{name}_ms"], row[f"{name}_ratio"] = ms, ms / direct
        rows.append(row)
    wins = [r["layer"] for r in rows if min(r.get("im2col_ratio", 9), r.get("shifted_ratio", 9)) < 0.9]
    rewritable = [r for r in rows if "im2col_ms" in r]
    rule = (f"rewrite these layers: {', '.join(wins)}" if wins else
            f"keep XNNPACK's direct convolution: no rewrite was >= 10% faster on any of {len(rewritable)} "
            f"rewritable layers")
    result = {"model": args.model, "machine": _machine(), "rounds": args.rounds, "iterations": args.iterations,
              "rows": rows, "rule": rule}
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"conv_lowering-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.model} convolutions on {result['machine']['cpu_model']}, 1 thread, median of {args.rounds} rounds")
    print("| layer | direct ms | GFLOP/s | im2col ms (÷ direct) | shifted ms (÷ direct) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        cell = lambda n: f"{r[n + '_ms']:.3f} ({r[n + '_ratio']:.2f})" if n + "_ms" in r else "-"
        print(f"| {r['layer']} | {r['direct_ms']:.3f} | {r['direct_gflops']:.1f} | {cell('im2col')} | {cell('shifted')} |")
    print(f"rule: {rule}")
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
