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
    bisection finds the nodes to keep out."""
    m = read_manifest(make_artifact("factories:mobilevit_block", "rpi5", "int8"))
    assert m.status == "ok", m.verification.failures
    assert m.operators.delegated.get("XnnpackBackend", 0) >= 1
    assert any("left on portable kernels: XNNPACK fails on" in w for w in m.warnings), m.warnings
    assert m.graph["lowering_attempts"] > 1
