"""A warning must be true for the model it names (issue 20): MobileNetV2's export warned "a loop
unrolled over its steps (e.g. an RNN …)". The large-graph warning names a loop only for a module whose
own nodes repeat (an RNN over its steps, a Python loop over a cell); a graph that is merely big is
called big. Checked on the decomposed (edge) graphs of real models: torchvision definitions with
weights=None, nothing downloaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgerun.export import lowering


class CellLoop(nn.Module):
    """A GRU cell applied in a Python loop over 40 steps: torch.export unrolls it."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 16)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h)


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def _models():
    import torchvision.models as tv

    img = (torch.randn(1, 3, 64, 64),)
    return {
        "mobilenet_v2": (lambda: tv.mobilenet_v2(weights=None), img, False),
        "mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(weights=None), img, False),
        "resnet18": (lambda: tv.resnet18(weights=None), img, False),
        "lstm": (LSTMNet, (torch.randn(1, 40, 8),), True),
        "gru_cell_loop": (CellLoop, (torch.randn(1, 40, 8),), True),
    }


def _summary(name):
    from executorch.exir import to_edge

    make, example, _ = _models()[name]
    torch.manual_seed(0)
    model = make().eval()
    ep = torch.export.export(model, example, strict=False)
    graph = to_edge(ep).exported_program().graph_module.graph
    return len(ep.graph.nodes), lowering.GraphSummary.of(graph)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "resnet18", "lstm", "gru_cell_loop"])
def test_the_large_graph_warning_names_a_loop_only_where_nodes_repeat(name, monkeypatch):
    loop = _models()[name][2]
    exported, summary = _summary(name)
    facts = lowering.graph_facts(exported, summary)
    assert bool(facts["unrolled"]) is loop, facts
    # make every one of them "large" so the warning is written, and read what it claims
    monkeypatch.setattr(lowering, "LARGE_GRAPH_NODES", 1)
    facts = lowering.graph_facts(exported, summary)
    text = lowering.graph_warning(facts)
    assert text and f"{facts['nodes']} operator nodes" in text
    assert ("loop unrolled" in text) is loop, text
    if loop:
        assert facts["unrolled"][0] in text and "kinds of operator" in text
    else:
        assert "RNN" not in text and facts["top_modules"][0]["module"] in text
