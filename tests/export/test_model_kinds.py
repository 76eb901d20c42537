"""Issue 13's eight kinds of models export for aarch64 with every scheme, or are refused with a
message that says what to do — never an internal error; quantization that did little says so."""

import pytest

from edgerun.export import ExportError, export_model, read_manifest

MODELS = ["lstm_classifier", "tiny_gpt", "tiny_unet", "two_head", "dilated_audio", "mobilevit_block",
          "float_and_index", "channel_shuffle"]
SCHEMES = ["fp32", "int8", "int8-dynamic", "8da4w"]
#: 8da4w quantizes only nn.Linear layers whose input width is a multiple of the group size
REFUSED_8DA4W = {"tiny_unet": "no nn.Linear layers", "channel_shuffle": "--group-size 8",
                 "two_head": "--group-size 16", "dilated_audio": "--group-size 8", "lstm_classifier": "--group-size 16"}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("model", MODELS)
def test_model_kind_exports_or_is_refused_with_advice(make_artifact, tmp_path, model, scheme):
    # rpi5 and android-arm64 make byte-identical programs (test below): one aarch64 target is enough
    if scheme == "8da4w" and model in REFUSED_8DA4W:
        with pytest.raises(ExportError) as info:
            export_model(f"factories:{model}", "rpi5", scheme, tmp_path / "out")
        assert info.value.stage == "quantize" and REFUSED_8DA4W[model] in info.value.paragraph()
        return
    m = read_manifest(make_artifact(f"factories:{model}", "rpi5", scheme))
    assert m.status == "ok", m.verification.failures
    assert m.operators.delegated.get("XnnpackBackend", 0) >= 1
    if scheme != "fp32":
        assert "layers" in m.scheme.facts


@pytest.mark.slow
def test_rpi5_and_android_arm64_programs_are_byte_identical(make_artifact):
    a = read_manifest(make_artifact("factories:two_head", "rpi5", "int8"))
    b = read_manifest(make_artifact("factories:two_head", "android-arm64", "int8"))
    assert a.pte_path.read_bytes() == b.pte_path.read_bytes()


def test_8da4w_on_a_model_without_linear_layers_says_to_use_int8(tmp_path):
    with pytest.raises(ExportError) as info:
        export_model("factories:tiny_unet", "host", "8da4w", tmp_path / "out")
    text = info.value.paragraph()
    assert "this model has no nn.Linear layers; 8da4w quantizes only linear layers" in text
    assert "int8 or int8-dynamic" in text and "group-size" not in text


@pytest.mark.slow
def test_lstm_int8_says_its_weights_were_not_quantized(make_artifact):
    m = read_manifest(make_artifact("factories:lstm_classifier", "rpi5", "int8"))
    layers = m.scheme.facts["layers"]
    assert layers["LSTM"]["quantized"] == 0 and layers["LSTM"]["quantized_params"] == 0
    assert layers["Linear"]["quantized"] == 1 and layers["Linear"]["quantized_params"] == 16 * 4
    assert m.scheme.facts["quantized_share"] < 0.5
    assert any(w.startswith("int8 quantized") and "LSTM" in w and "not quantized by XNNPACKQuantizer" in w
               for w in m.warnings), m.warnings


@pytest.mark.slow
def test_unrolled_recurrence_is_reported_with_its_module(make_artifact):
    m = read_manifest(make_artifact("factories:lstm_classifier", "rpi5", "fp32"))
    assert m.graph["nodes"] > 10 * m.graph["exported_nodes"]
    assert m.graph["top_modules"][0]["module"] == "lstm" and m.graph["top_modules"][0]["type"] == "LSTM"
    assert m.graph["large"] and any("lstm (LSTM)" in w for w in m.warnings)
    assert set(m.stage_seconds) >= {"export", "lower", "write", "verify"}
