"""The MLPerf Tiny models of the zoo (issue 24 item 6), written from their published architectures: each
builds, runs, has the reference model's parameter count, and ds_cnn exports for host int8 and verifies.

The reference parameter counts are those of the MLPerf Tiny reference Keras models, trainable parameters
(Keras also counts BatchNorm's moving mean and variance, which are buffers here): DS-CNN 23,756 (the
count published with the reference KWS model); ResNet-8 78,186 (78,666 with the 480 BN statistics);
MobileNetV1 x0.25 at 96x96 with 2 classes 216,322 (221,794 with 5,472); the anomaly-detection autoencoder
267,928 (269,992 with 2,064). The other three export in the slow zoo test (tests/export/test_zoo.py)."""

import pytest

from edgerun.export import MODELS, read_manifest

PUBLISHED = {   # model -> (trainable parameters of the reference model, input shape, output shape)
    "ds_cnn": (23_756, (1, 1, 49, 10), (1, 12)),
    "resnet8": (78_186, (1, 3, 32, 32), (1, 10)),
    "mobilenet_v1_025": (216_322, (1, 3, 96, 96), (1, 2)),
    "autoencoder_ad": (267_928, (1, 640), (1, 640)),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_an_mlperf_tiny_model_has_the_published_shape_and_size(name):
    import torch

    params, shape_in, shape_out = PUBLISHED[name]
    model, example = MODELS[name].build()
    assert tuple(example[0].shape) == shape_in and not model.training
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - params) <= 0.02 * params, f"{name}: {n:,} parameters, the reference has {params:,}"
    with torch.no_grad():
        y = model(*example)
    assert tuple(y.shape) == shape_out and torch.isfinite(y).all()
    assert y.std() > 1e-3, f"{name}: outputs of a random model should not be constant"
    again, _ = MODELS[name].build()   # seeded: the same weights twice
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_ds_cnn_exports_for_host_int8_and_verifies(make_artifact):
    m = read_manifest(make_artifact("ds_cnn", "host", "int8")).to_json()
    assert m["status"] == "ok", m["verification"]["failures"]
    out = m["verification"]["outputs"][0]
    assert out["top1_agreement"] == 1.0 and 20 < out["snr_db"] < float("inf")
    assert m["operators"]["delegated"].get("XnnpackBackend", 0) >= 1
