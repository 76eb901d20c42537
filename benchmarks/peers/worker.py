"""The peers benchmark's child process: one job, one JSON line on stdout, logs on stderr.

Not a user command (``run.py`` starts it, in edgerun's venv or the peer venv as the job needs)::

    worker.py prepare --model NAME --root DIR
    worker.py convert --peer edgerun|onnxruntime|litert --workdir DIR --scheme S --out DIR
    worker.py measure --runtime R --workdir DIR [--file F] --threads T --warmup N --iterations N [--bundle B]

The script's own folder is ``sys.path[0]``, so the sibling modules import as ``common``, ``convert`` ...
Errors inside a job are reported in the JSON line (``"ok": false, "error": ...``), exit 0; a non-zero
exit means the process itself died (the parent then keeps its stderr's tail).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from common import emit, keep_stdout_for_result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="job", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--model", required=True)
    p.add_argument("--root", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--peer", required=True)
    c.add_argument("--workdir", required=True)
    c.add_argument("--scheme", required=True)
    c.add_argument("--out", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--runtime", required=True)
    m.add_argument("--workdir", required=True)
    m.add_argument("--file")
    m.add_argument("--threads", type=int, required=True)
    m.add_argument("--warmup", type=int, required=True)
    m.add_argument("--iterations", type=int, required=True)
    m.add_argument("--bundle")
    args = ap.parse_args(argv)
    keep_stdout_for_result()
    try:
        if args.job == "prepare":
            from models import prepare

            emit({"ok": True, **prepare(args.model, Path(args.root))})
        elif args.job == "convert":
            from convert import convert

            emit(convert(args.peer, Path(args.workdir), args.scheme, Path(args.out)))
        else:
            from measure import measure

            emit(measure(args.runtime, Path(args.workdir), args.file, args.threads, args.warmup, args.iterations,
                         args.bundle))
    except Exception as exc:  # noqa: BLE001 - said in the JSON line; the parent records it and goes on
        traceback.print_exc(file=sys.stderr)
        emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
