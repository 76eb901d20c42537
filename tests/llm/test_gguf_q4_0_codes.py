"""8da4w (group size 32) from a Q4_0 GGUF keeps the GGUF's own 4-bit codes and scales wherever XNNPACK's
int4 layout can hold them, instead of rounding the dequantized values again.

Q4_0 is symmetric: value = d * (q - 8), torchao's int4 group with codes q - 8 and scale d. XNNPACK takes
only positive scales, and llama.cpp gives each block's largest-magnitude value the code -8 whatever its
sign, so d < 0 for the blocks whose largest value is positive (their negated codes reach +8, one past
int4): those keep the least-loss choice instead. The Q4_0 GGUF is made by llama.cpp's own llama-quantize
from the tiny F32 GGUF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgerun.export.llm.gguf_model import Q4_0_BLOCK, dequantized, load_llama, q4_0_codes, read_gguf
from edgerun.export.llm.quantize import KEEP_8BIT, quantize_llama
from edgerun.export.schemes import Int8DynAct4BitWeight

INT4 = ("feed_forward.w1", "feed_forward.w3")   # the tiny Llama's int4 linears under 8da4w (KEEP_8BIT: the rest)
GGUF_NAME = {"feed_forward.w1": "ffn_gate.weight", "feed_forward.w3": "ffn_up.weight"}


@pytest.fixture(scope="module")
def q4_0_gguf(tiny_gguf, llamacpp, tmp_path_factory):
    return llamacpp.quantize(tiny_gguf, tmp_path_factory.mktemp("q4_0") / "tiny-q4_0.gguf", "Q4_0")


def _int4(q, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes [rows, cols], scales [rows, groups])`` of an int4 linear of a quantized model."""
    params = dict(q.get_submodule(name).named_parameters())
    codes, scales, zero = (params[f"parametrizations.weight.original{i}"] for i in range(3))
    assert not zero.any()
    return codes, scales


def _deq(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    rows = codes.shape[0]
    return (codes.float().reshape(rows, -1, Q4_0_BLOCK) * scales.unsqueeze(-1)).reshape(codes.shape)


def test_q4_0_codes_read_raw_are_the_gguf_values_bit_for_bit(q4_0_gguf):
    g = read_gguf(q4_0_gguf)
    name = "blk.0.ffn_gate.weight"
    assert g.tensors[name].tensor_type.name == "Q4_0"
    codes, d = q4_0_codes(g, name)
    assert codes.dtype == np.int8 and codes.min() >= -8 and codes.max() <= 7
    rows = codes.shape[0]
    values = (codes.reshape(rows, -1, Q4_0_BLOCK).astype(np.float32) * d[..., None]).reshape(codes.shape)
    assert np.array_equal(values, dequantized(g, name))
    # llama.cpp's rule: each block's largest-magnitude value is the code -8, so d's sign is that value's
    assert ((codes.reshape(rows, -1, Q4_0_BLOCK) == -8).any(-1)).all()
    assert 0.2 < (d < 0).mean() < 0.8


def test_8da4w_keeps_the_gguf_codes_and_scales_of_every_block_xnnpack_can_hold(q4_0_gguf):
    model, g = load_llama(q4_0_gguf, max_context=48)
    q, facts = quantize_llama(model, Int8DynAct4BitWeight(group_size=32))
    exact = 0
    for i in range(model.config.n_layers):
        for lin in INT4:
            name = f"layers.{i}.{lin}"
            codes, scales = _int4(q, name)
            gguf_codes, d = (torch.from_numpy(a) for a in q4_0_codes(g, f"blk.{i}.{GGUF_NAME[lin]}"))
            assert (scales > 0).all()       # XNNPACK refuses any other scale when the program loads
            held = d > 0
            # those blocks: the GGUF's own codes and scale, so exactly the GGUF's dequantized values
            assert torch.equal(scales[held], d[held])
            own = codes.reshape(*d.shape, Q4_0_BLOCK)
            assert torch.equal(own[held], gguf_codes.reshape(*d.shape, Q4_0_BLOCK)[held])
            values = torch.from_numpy(dequantized(g, f"blk.{i}.{GGUF_NAME[lin]}"))
            err = (_deq(codes, scales) - values).reshape(*d.shape, Q4_0_BLOCK)
            assert err[held].abs().max() == 0
            # the other blocks lose no more than the GGUF's codes negated and clipped to +7 would
            clipped = (-gguf_codes.reshape(*d.shape, Q4_0_BLOCK)).clamp(max=7).float() * (-d).unsqueeze(-1)
            clip_loss = ((clipped - values.reshape(*d.shape, Q4_0_BLOCK)) ** 2).sum(-1)
            assert ((err ** 2).sum(-1)[~held] <= clip_loss[~held] + 1e-12).all()
            exact += int(held.sum())
    kept = facts["int4_from_gguf_q4_0"]
    assert kept["layers"] == len(INT4) * model.config.n_layers and kept["exact"] == exact
    assert kept["groups"] == sum(_int4(q, f"layers.{i}.{lin}")[1].numel()
                                 for i in range(model.config.n_layers) for lin in INT4)


def test_weights_that_are_not_the_gguf_codes_are_rounded_as_before(q4_0_gguf, tiny_gguf, llamacpp, tmp_path):
    # fine-tuned weights laid over the GGUF's: no longer its codes times its scales
    model, _ = load_llama(q4_0_gguf, max_context=48)
    with torch.no_grad():
        model.layers[0].feed_forward.w1.weight.add_(1e-3)
    _, facts = quantize_llama(model, Int8DynAct4BitWeight(group_size=32))
    assert facts["int4_from_gguf_q4_0"]["layers"] == len(INT4) * model.config.n_layers - 1
    # another group size than Q4_0's blocks, and an asymmetric 4-bit GGUF (Q4_1: a minimum per block)
    model, _ = load_llama(q4_0_gguf, max_context=48)
    assert "int4_from_gguf_q4_0" not in quantize_llama(model, Int8DynAct4BitWeight(group_size=64))[1]
    q4_1 = llamacpp.quantize(tiny_gguf, tmp_path / "tiny-q4_1.gguf", "Q4_1")
    model, g = load_llama(q4_1, max_context=48)
    assert g.tensors["blk.0.ffn_gate.weight"].tensor_type.name == "Q4_1"
    assert "int4_from_gguf_q4_0" not in quantize_llama(model, Int8DynAct4BitWeight(group_size=32))[1]


@pytest.mark.slow
def test_the_q4_0_8da4w_program_loads_verifies_and_stands_beside_llamacpp(q4_0_gguf, llamacpp, edgerun_home,
                                                                          tmp_path):
    """The program XNNPACK packs (positive scales only) loads and passes the export's checks; its perplexity
    under llama.cpp's rule is within 2 % of llama-perplexity's on the same Q4_0 file (issue 19's goal;
    measured here -0.05 %: llama.cpp also rounds the activations to Q8_0, the program to int8 per token)."""
    from edgerun.export import export_model
    from edgerun.export.llm import llamacpp as lc
    from test_llamacpp_perplexity import _llamacpp_visible

    with pytest.MonkeyPatch.context() as mp, _llamacpp_visible(llamacpp, edgerun_home):
        mp.setenv("EDGERUN_HOME", str(edgerun_home))
        m = export_model(str(q4_0_gguf), "rpi5", "8da4w", tmp_path / "q", max_context=48,
                         scheme_options={"group_size": 32})
    assert m.ok, m.verification.failures
    assert m.scheme.facts["int4_from_gguf_q4_0"]["exact"] > 0
    ref = m.llm.quality.llamacpp
    assert ref.gguf_type == "Q4_0" and ref.llama_cpp_python == lc.LLAMA_CPP_PYTHON
    assert abs(ref.program / ref.ppl - 1) < 0.02, (ref.program, ref.ppl)


@pytest.mark.parametrize("int8_layers, wide", [
    ("attention/ffn_down/head", None),           # the default: KEEP_8BIT and the head
    ("head", ("output",)),
    ("none", ()),
])
def test_int8_layers_chooses_which_linears_stay_int8_and_every_other_one_keeps_the_gguf_codes(
        q4_0_gguf, int8_layers, wide):
    model, _ = load_llama(q4_0_gguf, max_context=48)
    q, facts = quantize_llama(model, Int8DynAct4BitWeight(group_size=32, int8_layers=int8_layers))
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if wide is None:
        wide = ("output",) + tuple(n for n in linears if n.endswith(KEEP_8BIT))
    int4 = [n for n in linears if n not in wide]
    assert facts["int8_linear_layers"] == len(wide) and facts["int4_linear_layers"] == len(int4)
    assert facts["lm_head"].startswith("int8" if "output" in wide else "int4")
    for name in int4:   # grouped int4: codes, a scale per group of 32 and no zero point
        codes, scales = _int4(q, name)
        assert codes.min() >= -8 and codes.max() <= 7 and scales.shape[1] == codes.shape[1] // 32
    # the GGUF's own codes are kept in every int4 layer that came from a Q4_0 tensor (the head is tied to the
    # embedding, which llama-quantize stores at another type, so it is rounded as before)
    assert facts["int4_from_gguf_q4_0"]["layers"] == len([n for n in int4 if n != "output"])


def test_an_unknown_int8_layer_kind_is_refused_naming_the_kinds():
    from edgerun.core.errors import UsageError
    from edgerun.export.recipes import parse_recipe

    with pytest.raises(UsageError, match="attention/ffn_down/ffn_up/head"):
        parse_recipe("8da4w(int8_layers=attention/bogus)")
