"""``edgerun finetune``: train a model on the device with the native runner, bring back a verified artifact.

The hall's wiring: model spec + data -> training program (:mod:`edgerun.export.finetune`, cached by
recipe) -> the runner's train mode on the device (:mod:`edgerun.runtime.train`; loss streamed as it
trains) -> a training record in the store beside inference runs -> with ``export_to``, the trained
weights in the eager model, their held-out accuracy computed here and compared with what the device
reported, and an inference artifact for a target whose manifest names its lineage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgerun.core.errors import EdgerunError, UsageError
from edgerun.export.finetune import METHODS, WITH_LORA, ZEROTH_ORDER  # the methods are the program builder's

log = logging.getLogger("edgerun.finetune")

#: how far (absolute) eager accuracy of the pulled weights may sit from the device's own evaluation
EVAL_AGREEMENT = 0.02


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    method: str = "full"                  # full | lora | qlora | mezo | zo-lora (see METHODS)
    base_bits: int = 4                    # qlora: the frozen base's precision (4 or 8)
    batch: int = 16
    lora_rank: int = 8
    lora_alpha: float | None = None       # default: the rank (scale 1)
    lora_targets: tuple[str, ...] = ()    # linear layers whose name contains one of these; () = all
    freeze: tuple[str, ...] = ()
    data: str | None = None               # .npz with x_train, y_train[, x_eval, y_eval]; None: the model's dataset
    data_on_device: str | None = None     # a directory on the device holding x_train.npy ... (never leaves it)
    resume: str | None = None             # a checkpoint.bin of an earlier run of the same program
    export_to: str | None = None
    seq_len: int = 32                     # LLMs: tokens per training sequence
    export_max_context: int | None = None  # LLMs, --export-to: the exported program's KV cache length
    eval_fraction: float = 0.1            # LLMs: the share of the text's windows held out
    target: str = "host"
    scheme: str = "fp32"
    timeout_s: float = 3600.0
    variant: str = "full"

    def __post_init__(self) -> None:
        """Every option checked before any work (a bad one is exit 2 at once, not after an export)."""
        import math

        if self.method not in METHODS:
            raise UsageError(f"--method {self.method}: choose {_choices()}.")
        if self.base_bits not in (4, 8):
            raise UsageError(f"--base-bits must be 4 or 8, got {self.base_bits!r}.")
        for name, value, lo, hi in (("batch", self.batch, 1, 1 << 16), ("rank", self.lora_rank, 1, 4096),
                                    ("seq-len", self.seq_len, 1, 1 << 16)):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise UsageError(f"--{name} must be an integer in [{lo}, {hi}], got {value!r}.")
        if self.export_max_context is not None and not (isinstance(self.export_max_context, int)
                                                        and 1 <= self.export_max_context <= 1 << 20):
            raise UsageError(f"--max-context must be an integer in [1, {1 << 20}], got {self.export_max_context!r}.")
        if self.lora_alpha is not None and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise UsageError(f"--lora-alpha must be a number > 0, got {self.lora_alpha!r}.")
        if not (isinstance(self.eval_fraction, (int, float)) and 0 <= self.eval_fraction < 1):
            raise UsageError(f"the held-out fraction must be in [0, 1), got {self.eval_fraction!r}.")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise UsageError(f"--timeout must be a number of seconds > 0, got {self.timeout_s!r}.")


def _choices() -> str:
    return ", ".join(METHODS[:-1]) + " or " + METHODS[-1]


#: What a fine-tune starts from when --method, --optimizer and --lr are not given, by kind of model.
#: Classifiers: full backprop, SGD with momentum at 0.01 (87 % on digits in 300 steps). LLMs: LoRA with
#: AdamW -- SGD at 0.01 barely moves an LLM (issue 26: SmolLM2's held-out perplexity 105.9 -> 98.3 in 20
#: LoRA steps), AdamW at 2e-3 reached 35.5 in 40; full fine-tuning of all of an LLM's weights takes a
#: smaller step (1e-4, AdamW's usual range for pretrained transformers). Zeroth-order steps of an LLM are
#: SGD along a random direction: MeZO's paper uses 1e-6..1e-7 for every weight, 1e-4..5e-5 for LoRA.
CLASSIFIER_DEFAULTS = {"method": "full", "optimizer": "sgd",
                       "lr": {"full": 0.01, "lora": 0.01, "qlora": 0.01, "mezo": 0.01, "zo-lora": 0.01}}
LLM_DEFAULTS = {"method": "lora", "optimizer": "adamw",
                "lr": {"full": 1e-4, "lora": 2e-3, "qlora": 2e-3, "mezo": 1e-6, "zo-lora": 1e-4}}


def training_defaults(model: str, method: str | None = None, optimizer: str | None = None,
                      lr: float | None = None) -> tuple[str, str, float]:
    """``(method, optimizer, lr)`` for ``model`` with the ones not given taken from its kind's defaults
    (:data:`LLM_DEFAULTS` for an LLM spec: a GGUF or an LLM zoo name; else :data:`CLASSIFIER_DEFAULTS`)."""
    from edgerun.export.llm.zoo import LLMSpec
    from edgerun.export.zoo import get_model

    defaults = LLM_DEFAULTS if isinstance(get_model(model), LLMSpec) else CLASSIFIER_DEFAULTS
    method = method or defaults["method"]
    if method not in defaults["lr"]:
        raise UsageError(f"--method {method}: choose {_choices()}.")
    if optimizer is None:  # zeroth-order methods are their own SGD step
        optimizer = "sgd" if method in ZEROTH_ORDER else defaults["optimizer"]
    return method, optimizer, lr if lr is not None else defaults["lr"][method]


#: an array of training data larger than this (decompressed) is refused before it is read
MAX_DATA_BYTES = 4 << 30
DATA_KEYS = ("x_train", "y_train", "x_eval", "y_eval")
#: an LLM's fine-tuning text larger than this is refused before it is read
MAX_TEXT_BYTES = 256 << 20


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an ``.npz``, read from the headers alone (nothing is
    decompressed or unpickled); a file that is not an npz is a :class:`UsageError` naming it."""
    import zipfile

    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
                out[info.filename[:-4]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise UsageError(f"--data {path}: not a readable .npz of arrays ({type(exc).__name__}: {exc}).",
                         hint="Write it with numpy.savez(path, x_train=..., y_train=..., x_eval=..., y_eval=...).") from None
    return out


def check_arrays(arrays: dict, where: str, sample_shape, num_classes: int | None) -> None:
    """Training data as the runner needs it, or a :class:`UsageError` naming ``where``, the array and what
    was expected: inputs of the model's sample shape, numeric and finite; labels integer class ids in
    ``[0, num_classes)`` of shape [N], as many as inputs; at least one sample."""
    for x, y in (("x_train", "y_train"), ("x_eval", "y_eval")):
        if x not in arrays:
            continue
        xa, ya = arrays[x], arrays[y]
        if xa.dtype.kind not in "fiu" or xa.dtype.itemsize > 8:
            raise UsageError(f"{where}: {x} holds {xa.dtype}; expected numbers (float32 inputs, or integer token ids).")
        if xa.ndim < 1 or xa.shape[0] == 0:
            raise UsageError(f"{where}: {x} is empty (shape {tuple(xa.shape)}); expected at least one sample.")
        if tuple(xa.shape[1:]) != tuple(sample_shape):
            raise UsageError(f"{where}: {x} holds samples of shape {tuple(xa.shape[1:])}; the model takes "
                             f"{tuple(sample_shape)} (one sample, without the batch dimension).")
        if xa.dtype.kind == "f" and not np.all(np.isfinite(xa)):
            bad = int(np.count_nonzero(~np.isfinite(xa)))
            first = int(np.argwhere(~np.isfinite(xa.reshape(len(xa), -1)))[0][0])
            raise UsageError(f"{where}: {x} holds {bad} NaN or infinite value(s) (the first in sample {first}); "
                             "training on them gives a NaN loss whatever the learning rate.",
                             hint="Clean or drop those samples.")
        if ya.ndim != 1 or ya.dtype.kind not in "iu":
            raise UsageError(f"{where}: {y} must be integer class labels of shape [N], got {ya.dtype} "
                             f"{tuple(ya.shape)}.")
        if len(ya) != len(xa):
            raise UsageError(f"{where}: {y} has {len(ya)} labels for {len(xa)} samples in {x}; expected one each.")
        if num_classes is not None and len(ya):
            lo, hi = int(ya.min()), int(ya.max())
            if lo < 0 or hi >= num_classes:
                bad = lo if lo < 0 else hi
                raise UsageError(f"{where}: {y} holds label {bad}; the model has {num_classes} classes (labels "
                                 f"0..{num_classes - 1}).", hint="Map the labels onto the model's classes.")


def _load_data(spec, settings: FinetuneSettings, sample_shape, num_classes: int | None = None):
    if settings.data_on_device:
        return None
    if settings.data:
        p = Path(settings.data)
        if not p.is_file() or p.suffix != ".npz":
            raise UsageError(f"--data {settings.data}: expected an existing .npz with x_train and y_train "
                             "(and x_eval, y_eval for held-out evaluation).")
        headers = _npz_headers(p)
        missing = [k for k in ("x_train", "y_train") if k not in headers]
        if missing:
            raise UsageError(f"--data {p} has no {', '.join(missing)} (it has: {', '.join(headers) or 'nothing'}).")
        for k, (shape, dtype) in headers.items():
            if k not in DATA_KEYS:
                continue
            if dtype.hasobject or dtype.kind not in "fiub":
                raise UsageError(f"--data {p}: {k} holds {dtype}; expected a numeric array (object and pickled "
                                 "arrays are never loaded).")
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes > MAX_DATA_BYTES:
                raise UsageError(f"--data {p}: {k} would take {nbytes:,} bytes ({shape}); at most "
                                 f"{MAX_DATA_BYTES:,} is read.")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files if k in DATA_KEYS}
        except (ValueError, OSError, EOFError) as exc:
            raise UsageError(f"--data {p}: an array cannot be read ({type(exc).__name__}: {exc}).") from None
        if ("x_eval" in arrays) != ("y_eval" in arrays):
            raise UsageError(f"--data {p}: x_eval and y_eval go together.")
        where = f"--data {p}"
    elif spec.dataset is not None:
        split = spec.dataset.load()
        arrays = {"x_train": split["train"][0].numpy(), "y_train": split["train"][1].numpy(),
                  "x_eval": split["test"][0].numpy(), "y_eval": split["test"][1].numpy()}
        where = f"the dataset of {spec.name}"
    else:
        raise UsageError(f"model {spec.name} has no dataset of its own; give --data FILE.npz (x_train, y_train, "
                         "x_eval, y_eval) or --data-on-device DIR.")
    check_arrays(arrays, where, sample_shape, num_classes)
    return arrays


def _num_classes(net, example) -> int | None:
    """The classes of a classifier: the last dimension of its output on the example input."""
    import torch

    was_training = net.training
    try:
        with torch.no_grad():
            out = net.eval()(*example)
    except Exception:  # noqa: BLE001 (the export reports a model that does not run; here it only bounds labels)
        return None
    finally:
        net.train(was_training)
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.ndim >= 1 else None


def text_windows(ids, seq_len: int, bos_id: int | None) -> tuple[np.ndarray, bool]:
    """Training windows ``[N, seq_len + 1]`` from a text's ids (inputs: the first ``seq_len``, targets: the
    next ``seq_len``), and whether each starts with BOS.

    A model whose GGUF adds BOS (``bos_id`` given: SentencePiece Llamas, Llama 3, Gemma ...) never sees a
    sequence without it — llama.cpp puts it first in every prompt and every perplexity chunk, and edgerun's
    held-out perplexity follows that rule — so each window is BOS + ``seq_len`` text tokens and the position
    after BOS is trained as it is used. Otherwise (GPT-2 style vocabularies: SmolLM2, Qwen) the text is
    packed as HF's causal-LM scripts pack it: windows of ``seq_len + 1`` ids overlapping by one."""
    ids = np.asarray(ids, dtype=np.int64)
    T = seq_len
    if bos_id is not None:
        n = len(ids) // T
        body = ids[:n * T].reshape(n, T)
        return np.concatenate([np.full((n, 1), bos_id, np.int64), body], axis=1), True
    n = max(0, (len(ids) - 1) // T)
    return (np.stack([ids[i * T:i * T + T + 1] for i in range(n)]) if n else np.zeros((0, T + 1), np.int64)), False


def _text_data(spec, settings: FinetuneSettings):
    """An LLM's fine-tuning data: a text (``--data FILE.txt``, default the held-out text edgerun ships)
    tokenised with the GGUF's own tokenizer, cut into windows by :func:`text_windows` (BOS first in each when
    the GGUF adds BOS); the last ``eval_fraction`` of the windows is held out. With
    ``--data-on-device DIR`` the windows are already there as ``x_train.npy``/``y_train.npy`` (and
    ``x_eval.npy``/``y_eval.npy``), ``[N, seq_len]`` int64 token ids and their next tokens: the runner
    checks their shapes against the program, and the text never leaves the device."""
    from edgerun.export.llm.export import DATA
    from edgerun.export.llm.tokenizer import encode, tokenizer_from_gguf

    if settings.data_on_device:  # token windows already on the device (x/y_train.npy [N, T] int64): never read here
        model, _example, _g = spec.build_llm(max(2, settings.seq_len))
        return model, None, {"text": None, "data_on_device": settings.data_on_device, "seq_len": settings.seq_len}
    path = Path(settings.data) if settings.data else DATA / "heldout.txt"
    if not path.is_file():
        raise UsageError(f"--data {path}: no such text file (LLM fine-tuning takes plain UTF-8 text).")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise UsageError(f"--data {path} is {path.stat().st_size:,} bytes; at most {MAX_TEXT_BYTES:,} of text is "
                         "read.", hint="Give a shorter text (a slice of it) to fine-tune on.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--data {path} is not UTF-8 text.") from None
    model, _example, g = spec.build_llm(max(2, settings.seq_len))
    tok, facts = tokenizer_from_gguf(g)
    ids = encode(tok, facts, text, add_special=False)   # special-token text (a chat transcript's) parsed
    windows, bos = text_windows(ids, settings.seq_len, facts.bos_id if facts.add_bos else None)
    n, T = len(windows), settings.seq_len
    n_eval = max(settings.batch, int(round(n * settings.eval_fraction))) if n >= 2 * settings.batch else 0
    if n - n_eval < settings.batch:
        raise UsageError(f"{path} gives {n} windows of {T + 1} tokens, fewer than a batch of {settings.batch} to "
                         "train on (plus one to evaluate).", hint="Give more text, a smaller --batch or --seq-len.")
    train, held = windows[:n - n_eval], windows[n - n_eval:]
    arrays = {"x_train": train[:, :-1], "y_train": train[:, 1:]}
    if len(held):
        arrays.update(x_eval=held[:, :-1], y_eval=held[:, 1:])
    return model, arrays, {"text": str(path), "tokens": len(ids), "windows": n, "seq_len": T, "bos_per_window": bos}


def _program_cache(spec, batch: int, freeze, method: str, extra=None) -> Path:
    import edgerun.export.finetune as builder
    from edgerun.core.artifact import sha256_file
    from edgerun.core.paths import cache_dir
    from edgerun.export.recipe import tool_versions
    from edgerun.export.recipe import _model_identity  # noqa: PLC2701 (the export room's identity of a spec)

    model = _model_identity(spec)
    gguf = getattr(spec, "gguf", None)
    if gguf is not None:  # a GGUF is named by its path: the program must follow its bytes, as export's does
        model = {**model, "gguf_sha256": sha256_file(gguf())}
    # the code that builds the program is part of what it is (a changed quantizer must not reuse old programs)
    code = sha256_file(builder.__file__) if builder.__file__ else None
    key = json.dumps({"model": model, "batch": batch, "freeze": list(freeze), "method": method, "code": code,
                      "versions": tool_versions(), "split_mm": True, "extra": extra, "v": 3}, sort_keys=True)
    return cache_dir("finetune") / hashlib.sha256(key.encode()).hexdigest()[:16]


def eager_lm_loss(model, x: np.ndarray, y: np.ndarray) -> float:
    """Mean next-token cross-entropy of ``model.forward_train`` over every token of ``x`` -> ``y``."""
    import torch

    with torch.no_grad():
        logits = model.forward_train(torch.from_numpy(np.ascontiguousarray(x)))
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       torch.from_numpy(np.ascontiguousarray(y)).reshape(-1)))


def eager_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).argmax(-1).numpy()
    return float((pred == y).mean())


def finetune(model: str, device_name: str, request, settings: FinetuneSettings = FinetuneSettings(), *,
             store_path=None, inventory: str | None = None, on_stdout: Callable[[bytes], None] | None = None,
             on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` on ``device_name``; returns ``{"record", "program", "run_dir", "export", "agreement",
    "initial_model"}`` (the last: the module the training program was made from, with its starting weights
    -- LoRA adapters included -- to replay or compare the device's steps)."""
    from edgerun.export.finetune import TrainingProgram, export_training_program, load_trained, weights_sha256
    from edgerun.export.llm.zoo import LLMSpec
    from edgerun.export.zoo import get_model
    from edgerun.runtime.deploy import new_run_dir
    from edgerun.runtime.train import (TrainJob, analyse_training, check_resume, checkpoint_identity, data_hash,
                                       recover_checkpoint, write_data)

    from .cells import CellFailure, check_store, for_each_device, run_cell

    say = on_progress or (lambda m: None)
    spec = get_model(model)
    is_llm = isinstance(spec, LLMSpec)
    zo = settings.method in ZEROTH_ORDER
    if zo != request.mezo:
        request = dataclasses.replace(request, mezo=zo, momentum=0.0 if zo else request.momentum)
    if settings.data and settings.data_on_device:
        raise UsageError("give --data or --data-on-device, not both.")
    if settings.resume and not Path(settings.resume).is_file():
        raise UsageError(f"--resume {settings.resume}: no such checkpoint file.")
    check_store(store_path)  # a store this edgerun cannot write fails now, not after the training
    say("building the model")
    text_facts = None
    if is_llm:
        import torch

        net, arrays, text_facts = _text_data(spec, settings)
        example = (torch.zeros(1, settings.seq_len, dtype=torch.long),)
        if settings.method in WITH_LORA and not settings.lora_targets:
            settings = dataclasses.replace(settings, lora_targets=("attention.wq", "attention.wv"))
    else:
        net, example = spec.build()
        sample_shape = tuple(example[0].shape[1:])
        arrays = _load_data(spec, settings, sample_shape, _num_classes(net, example))
    if arrays is not None and len(arrays["x_train"]) < settings.batch:
        raise UsageError(f"the training data has {len(arrays['x_train'])} samples, fewer than one batch of "
                         f"{settings.batch}.", hint="Use a smaller --batch.")
    base_net = net
    lora = None
    if settings.method in WITH_LORA:
        from edgerun.export.finetune import add_lora

        net, chosen = add_lora(base_net, rank=settings.lora_rank, alpha=settings.lora_alpha,
                               targets=settings.lora_targets)
        lora = {"rank": settings.lora_rank, "alpha": settings.lora_alpha or settings.lora_rank, "layers": chosen}
        if settings.method in ("lora", "qlora"):  # backprop: the frozen layers keep one copy of their weights
            from edgerun.export.finetune import freeze_linears

            bits = settings.base_bits if settings.method == "qlora" else 32
            lora["frozen_layers"] = freeze_linears(net, bits)
            lora["base_bits"] = bits
    cache = _program_cache(spec, settings.batch, settings.freeze, settings.method,
                           {"lora": lora, "seq_len": settings.seq_len if is_llm else None,
                            "layers": getattr(spec, "layers", None)})
    say("exporting the training program")
    program = TrainingProgram.cached(cache)  # re-hashed: a changed or truncated train.pte is exported again
    if program is None:
        program = export_training_program(net, example, cache / "train.pte", batch=settings.batch,
                                          frozen=settings.freeze, method=settings.method)
        program.save(cache)
    run_dir = new_run_dir(device_name, f"{spec.name}-finetune")
    data_files = write_data(run_dir / "data", arrays["x_train"], arrays["y_train"], arrays.get("x_eval"),
                            arrays.get("y_eval")) if arrays is not None else None
    weights_in = None
    if zo:
        from edgerun.export.finetune import initial_weights

        init = run_dir / "init"
        init.mkdir()
        weights_in = {}
        for name, arr in initial_weights(net, program).items():
            np.save(init / f"{name}.npy", arr)
            weights_in[f"{name}.npy"] = init / f"{name}.npy"
    identity = checkpoint_identity(request, program_sha256=program.pte_sha256, method=settings.method,
                                   batch=settings.batch,
                                   data=data_hash(data_files) if data_files else f"device:{settings.data_on_device}")
    if settings.resume:  # a checkpoint of another run (program, optimizer, data ...) is refused, naming what differs
        check_resume(Path(settings.resume), identity, steps=request.steps)
    say(f"training on {device_name}")
    job = TrainJob(request, data=data_files, data_on_device=settings.data_on_device,
                   resume=Path(settings.resume) if settings.resume else None, weights_in=weights_in,
                   identity=identity)
    runs: list = []

    def analyse(run):
        wsha = weights_sha256(run.extras["weights"]) if run.extras.get("weights") else None
        record = analyse_training(run, model_name=spec.name, request=request, program=program,
                                  settings={"batch": settings.batch, "freeze": list(settings.freeze), "lora": lora,
                                            "data": settings.data or ("device:" + settings.data_on_device
                                                                      if settings.data_on_device else "dataset")})
        record = dataclasses.replace(record, training=dataclasses.replace(record.training, weights_sha256=wsha))
        if is_llm:  # an LLM's held-out figure is its perplexity: exp of the mean next-token loss
            record = dataclasses.replace(record, training=dataclasses.replace(
                record.training, eval=tuple(e.with_perplexity() for e in record.training.eval),
                settings={**record.training.settings, "text": text_facts}))
        return record

    def work(_name: str, dev) -> list:
        try:
            return [run_cell(program.path, dev, job, analyse, store_path=store_path, variant=settings.variant,
                             timeout=settings.timeout_s, run_dir=run_dir, on_stdout=on_stdout, on_run=runs.append)]
        except EdgerunError as exc:
            # a killed or failed training: its last checkpoint must not stay behind in the device's work dir
            saved = None if dev.cancelled else recover_checkpoint(dev, job, run_dir)
            if saved is not None:
                path, step = saved
                exc.hint = ((exc.hint + " ") if exc.hint else "") + (
                    f"The last checkpoint (step {step}) is saved in {path}: go on from it with the same options "
                    f"and --resume {path}.")
            raise

    (record,) = for_each_device([device_name], work, inventory=inventory)
    if isinstance(record, CellFailure):
        raise record.error
    run = runs[0]
    wsha = record.training.weights_sha256
    out: dict[str, Any] = {"record": record, "program": program, "run_dir": run_dir, "export": None,
                           "agreement": None, "initial_model": net}
    trained = load_trained(net, run.extras["weights"], program)
    if lora is not None:
        from edgerun.export.finetune import merge_lora

        trained = merge_lora(trained)
        out["lora"] = lora
    after = record.training.eval_after
    if is_llm and after and after.loss is not None and arrays is not None and "x_eval" in arrays:
        n = after.samples
        eager = eager_lm_loss(trained, arrays["x_eval"][:n], arrays["y_eval"][:n])
        out["agreement"] = {"device_loss": after.loss, "eager_loss": eager, "samples": n,
                            "agrees": abs(eager - after.loss) <= 1e-3 * max(1.0, abs(eager))}
    elif arrays is not None and "x_eval" in arrays and after and after.accuracy is not None:
        # the device's own evaluation covers whole batches only; eager sees the same samples
        n = after.samples
        eager = eager_accuracy(trained, arrays["x_eval"][:n], arrays["y_eval"][:n])
        out["agreement"] = {"device_accuracy": after.accuracy, "eager_accuracy": eager, "samples": n,
                            "agrees": abs(eager - after.accuracy) <= EVAL_AGREEMENT}
        if not out["agreement"]["agrees"]:
            log.warning("the trained weights score %.1f%% in eager PyTorch but %.1f%% on the device", eager * 100,
                        after.accuracy * 100)
    if settings.export_to:
        say(f"exporting the fine-tuned model for {settings.target} ({settings.scheme})")
        from edgerun.core.artifact import read_manifest, write_manifest
        from edgerun.export import export_model

        if is_llm:  # the GGUF's model with the trained parameters over it, exported like any LLM
            state = {n: p.detach().clone() for n, p in trained.named_parameters()}
            tuned = dataclasses.replace(spec, name=f"{spec.name}-finetuned", weights=lambda: state,
                                        weights_sha256=wsha,
                                        description=f"{spec.description} (fine-tuned on {device_name})")
            export_model(tuned, settings.target, settings.scheme, settings.export_to,
                         max_context=settings.export_max_context)
        else:  # the trained module itself: its identity hashes the trained weights, not the base model's
            export_model((trained, example), settings.target, settings.scheme, settings.export_to,
                         name=f"{spec.name}-finetuned")
        t = record.training
        from edgerun.core.artifact import Lineage, LoraFacts, TrainedFigures

        def figures(e):
            return None if e is None else TrainedFigures(samples=e.samples, loss=e.loss, accuracy=e.accuracy,
                                                         perplexity=e.perplexity, step=e.step)

        lineage = Lineage(
            base_model=spec.name, base_origin=spec.origin, method=t.method,
            lora=None if lora is None else LoraFacts(rank=lora["rank"], alpha=float(lora["alpha"]),
                                                     layers=tuple(lora["layers"]), base_bits=lora.get("base_bits"),
                                                     frozen_layers=lora.get("frozen_layers")),
            optimizer=t.optimizer, lr=t.lr, steps=t.start_step + t.steps, batch=t.batch, data_sha256=t.data_sha256,
            data=t.settings.get("data"), final_loss=t.loss_curve[-1][1] if t.loss_curve else None,
            eval_before=figures(t.eval_before), eval_after=figures(t.eval_after), weights_sha256=wsha,
            training_program_sha256=program.pte_sha256, run_id=record.run_id, device=device_name,
            agreement=out["agreement"])
        m = dataclasses.replace(read_manifest(settings.export_to), lineage=lineage)
        write_manifest(Path(settings.export_to), m)
        out["export"] = read_manifest(settings.export_to)
    return out
