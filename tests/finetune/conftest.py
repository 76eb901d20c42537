from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory) -> Path:
    """sklearn's bundled digits as [N,1,8,8] float32 in [0,1] with int64 labels, split 1400/397."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x_train=x[:1400], y_train=y[:1400], x_eval=x[1400:], y_eval=y[1400:])
    return path


# tiny_gguf: tests/conftest.py (one for the session, shared with tests/llm and tests/benchmarks)
