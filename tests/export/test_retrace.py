"""The idle re-trace skip (export/retrace.py) must give the program byte for byte as ExecuTorch's passes do
without it; the model has parts XNNPACK's passes change (BatchNorm folded into a conv, concatenation,
linear) and parts they leave alone, so both the re-trace and the skip are exercised."""

import pytest
import torch
from torch import nn

from edgerun.export import retrace


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(16, 4, 1)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = self.conv2(torch.cat([y, y * 0.5], dim=1))
        return self.fc(torch.nn.functional.silu(y).flatten(1))


def _program(model, example) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    ep = torch.export.export(model, example)
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    return edge.to_executorch().buffer


def test_same_program_with_and_without_the_skip(monkeypatch):
    torch.manual_seed(0)
    model = Mixed().eval()
    with torch.no_grad():   # BatchNorm statistics that are not the identity
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    example = (torch.randn(1, 3, 6, 6),)

    monkeypatch.setenv("EDGERUN_FULL_RETRACES", "1")
    with retrace.skip_idle_retraces() as on:
        assert not on
        full = _program(model, example)

    monkeypatch.delenv("EDGERUN_FULL_RETRACES")
    before = dict(retrace.COUNTS)
    with retrace.skip_idle_retraces() as on:
        if not on:
            pytest.skip("the skip is not applied on this ExecuTorch version (see retrace.CHECKED_ON)")
        skipped = _program(model, example)
    assert retrace.COUNTS["skipped"] > before["skipped"], "no pass was left idle: the skip was not exercised"
    assert retrace.COUNTS["retraced"] > before["retraced"], "no pass changed the graph: the re-trace path was not exercised"
    assert skipped == full


def test_installed_only_inside_and_nesting():
    from executorch.backends.xnnpack._passes.xnnpack_pass import XNNPACKPass

    assert "call" not in XNNPACKPass.__dict__
    with retrace.skip_idle_retraces() as on:
        with retrace.skip_idle_retraces() as inner:
            assert inner == on
        assert ("call" in XNNPACKPass.__dict__) == on
    assert "call" not in XNNPACKPass.__dict__ and "requires" not in XNNPACKPass.__dict__
