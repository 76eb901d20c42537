"""benchmarks/xnnpack_graph.py decodes what XNNPACK receives from a real lowered program.

Each test lowers a tiny module with ExecuTorch's own XNNPACK partitioner (no edgerun export, a few
seconds) and checks the decoded node counts against what the module makes XNNPACK do.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "xnnpack_graph.py"


@pytest.fixture(scope="module")
def xg():
    spec = importlib.util.spec_from_file_location("xnnpack_graph", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pte(module: nn.Module, example: tuple, path: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(module.eval(), example)
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(program.buffer)
    return path


class ConvBnRelu6(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        return self.dw(torch.nn.functional.relu6(self.bn(self.conv(x))))


class AddConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("offset", torch.linspace(-1, 1, 16))

    def forward(self, x):
        return torch.relu(x * 2.0) + self.offset


def test_conv_bn_relu6_is_one_fused_conv_between_layout_transposes(xg, tmp_path):
    torch.manual_seed(0)
    report = xg.inspect_program(_pte(ConvBnRelu6(), (torch.randn(1, 3, 16, 16),), tmp_path / "m.pte"))
    (method,) = report["methods"]
    assert method["kernel_calls"] == {} and method["delegate_calls"] == 1
    (d,) = method["delegates"]
    # batch norm folded, ReLU6 carried by the convolution as its output range, no clamp node
    assert d["kinds"].get("XNNConv2d") == 1 and d["kinds"].get("XNNDepthwiseConv2d") == 1
    assert "XNNBatchNorm" not in " ".join(d["kinds"]) and d["separate_clamps"] == 0
    assert d["detail"]["XNNConv2d k3x3 s2 groups=1 +clamp[0,6]"] == 1
    assert d["detail"]["XNNDepthwiseConv2d k3x3 s1 groups=C"] == 1
    # NCHW in and out: one transpose each way, nothing else moves data
    assert d["detail"]["XNNStaticTranspose perm=[0, 2, 3, 1]"] == 1
    assert d["detail"]["XNNStaticTranspose perm=[0, 3, 1, 2]"] == 1
    assert d["data_movement_nodes"] == 2
    assert [e["dims"] for e in d["external_inputs"]] == [[1, 3, 16, 16]]


def test_constant_operand_of_a_binary_op_is_an_external_input(xg, tmp_path):
    report = xg.inspect_program(_pte(AddConstant(), (torch.randn(4, 16),), tmp_path / "a.pte"))
    (d,) = report["methods"][0]["delegates"]
    assert d["kinds"].get("XNNAdd") == 1 and d["kinds"].get("XNNMultiply") == 1
    dims = sorted(e["dims"] for e in d["external_inputs"])
    # the activation, and the buffer and the scalar that the partitioner left outside the delegate
    assert [4, 16] in dims and [16] in dims and len(dims) == 3


def test_cli_refuses_a_missing_program(xg, tmp_path, capsys):
    assert xg.main([str(tmp_path / "nope.pte")]) == 2
    assert "give the path of a .pte file" in capsys.readouterr().err
