"""The delegate's lowering fails on a node (issue 13 item 2): the node stays on portable kernels, the
rest is delegated, and the manifest says which node and why."""

import pytest

from edgerun.export import export_model, read_manifest


@pytest.fixture
def conv_breaks_channels_last(monkeypatch):
    """XNNPACK's ChannelsLastTaggedReshapePass, made to fail on the regression head's first conv the
    way it failed on the issue's two-head network (an exception while it handles that node)."""
    from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import ChannelsLastTaggedReshapePass

    original = ChannelsLastTaggedReshapePass.requires_nhwc_input

    def requires_nhwc_input(self, node):
        stack = node.meta.get("nn_module_stack") or {}
        if "convolution" in str(node.target) and any(path == "reg.0" for path, _ in stack.values()):
            raise RuntimeError(f"cannot tag {node.name}")
        return original(self, node)

    monkeypatch.setattr(ChannelsLastTaggedReshapePass, "requires_nhwc_input", requires_nhwc_input)


def test_node_the_pass_fails_on_is_left_on_portable_kernels(tmp_path, conv_breaks_channels_last):
    m = export_model("factories:two_head", "rpi5", "fp32", tmp_path / "art")
    assert m.status == "ok"
    assert m.operators.non_delegated.get("aten::convolution.out") == 1     # only the culprit
    assert m.operators.delegated.get("XnnpackBackend", 0) >= 1
    assert m.warnings == ("node `aten.convolution.default` (in reg.0) left on portable kernels: XNNPACK's "
                          "ChannelsLastTaggedReshapePass fails on it",)
    assert read_manifest(tmp_path / "art").warnings == m.warnings


@pytest.mark.slow
def test_a_delegate_that_refuses_the_program_at_load_time_is_bisected(make_artifact):
    """MobileViT-like int8: XNNPACK lowers it but refuses to initialise it (StaticConstantPad);
    bisection finds the operators to keep out. Only operators are candidates (a q/dq pair kept out
    on its own made a program that loaded and computed wrong values), and a candidate program is
    accepted only if it agrees with the quantized graph, so the artifact verifies."""
    m = read_manifest(make_artifact("factories:mobilevit_block", "rpi5", "int8"))
    assert m.status == "ok", m.verification.failures
    assert not any("quantize_per_tensor" in w for w in m.warnings), m.warnings
    assert m.operators.delegated.get("XnnpackBackend", 0) >= 1
    assert any("left on portable kernels: XNNPACK fails on" in w for w in m.warnings), m.warnings
    assert m.graph["lowering_attempts"] > 1


def test_quantize_and_dequantize_nodes_belong_to_their_operator():
    """The fallback keeps operators out, never a q/dq node on its own: a dq names the operator
    that consumes it, a q the one that produces its input (a graph input's q: its consumer), and an
    origin's op is its operator, not its q/dq."""
    import torch

    import executorch.exir.passes.quant_fusion_pass  # noqa: F401 - registers quantized_decomposed

    from edgerun.export.lowering import GraphSummary, is_quant_node, operator_node

    qd = torch.ops.quantized_decomposed
    g = torch.fx.Graph()
    x = g.placeholder("x")
    q = g.call_function(qd.quantize_per_tensor.default, (x, 0.1, 0, -128, 127, torch.int8))
    dq = g.call_function(qd.dequantize_per_tensor.default, (q, 0.1, 0, -128, 127, torch.int8))
    relu = g.call_function(torch.ops.aten.relu.default, (dq,))
    q2 = g.call_function(qd.quantize_per_tensor.default, (relu, 0.1, 0, -128, 127, torch.int8))
    dq2 = g.call_function(qd.dequantize_per_tensor.default, (q2, 0.1, 0, -128, 127, torch.int8))
    g.output(dq2)
    for n in (relu, q2, dq2):    # the relu's output q/dq share its origin (as convert_pt2e makes them)
        n.meta["from_node"] = [type("Source", (), {"name": "relu", "from_node": []})()]
    assert [is_quant_node(n) for n in (q, dq, relu, q2, dq2)] == [True, True, False, True, True]
    assert operator_node(dq) is relu and operator_node(q) is relu and operator_node(q2) is relu
    assert operator_node(relu) is relu and operator_node(dq2) is relu     # the relu's output pair
    summary = GraphSummary.of(g)
    assert summary.operators == frozenset({"relu"})
    assert summary.origins["relu"][0].endswith("relu.default")      # not its dequantize
