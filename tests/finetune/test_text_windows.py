"""LLM fine-tuning windows: BOS first in every window when the GGUF adds BOS (as llama.cpp prompts and scores),
packed text otherwise; the data the trainer gets is what the tokenizer gives for the text."""

import sys
from pathlib import Path

import numpy as np
import pytest

from edgerun.finetune import FinetuneSettings, _text_data, text_windows

HERE = Path(__file__).parent


def test_packed_windows_overlap_by_one_without_bos():
    ids = np.arange(100, 121)
    w, bos = text_windows(ids, 4, None)
    assert not bos and w.shape == (5, 5)
    assert (w[:, 0] == [100, 104, 108, 112, 116]).all() and (w[:-1, -1] == w[1:, 0]).all()


def test_every_window_starts_with_bos_and_no_text_token_is_replaced():
    ids = np.arange(100, 121)
    w, bos = text_windows(ids, 4, 1)
    assert bos and w.shape == (5, 5) and (w[:, 0] == 1).all()
    assert (w[:, 1:].ravel() == ids[:20]).all()   # the text in order, each token once, none replaced by BOS


def test_too_short_a_text_gives_no_windows():
    assert text_windows(np.arange(3), 4, 1)[0].shape == (0, 5)
    assert text_windows(np.arange(4), 4, None)[0].shape == (0, 5)


@pytest.mark.parametrize("add_bos", [True, None])
def test_text_data_follows_the_ggufs_add_bos(tmp_path, add_bos):
    sys.path.insert(0, str(HERE.parent / "llm"))
    from tiny import write_tiny_gguf

    from edgerun.export.llm.gguf_model import read_gguf
    from edgerun.export.llm.tokenizer import tokenizer_from_gguf
    from edgerun.export.llm.zoo import gguf_spec

    gguf = write_tiny_gguf(tmp_path / "t.gguf", add_bos=add_bos)
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    _, arrays, facts = _text_data(gguf_spec(str(gguf)), FinetuneSettings(data=str(text), batch=2, seq_len=8))
    _, tf = tokenizer_from_gguf(read_gguf(gguf))
    x, y = arrays["x_train"], arrays["y_train"]
    assert facts["bos_per_window"] is bool(add_bos)
    assert (x[:, 1:] == y[:, :-1]).all()
    if add_bos:
        assert tf.bos_id is not None and (x[:, 0] == tf.bos_id).all()
    else:
        assert tf.bos_id is None or not (x[:, 0] == tf.bos_id).all()
