"""The model zoo: definitions in code, seeded random or locally trained weights, no downloads.

``get_model(name)`` accepts a zoo name, a user factory path ``package.module:factory``, or the path of
a Llama-architecture GGUF file (``path/to/model.gguf``, an LLM: :mod:`edgerun.export.llm`).
"""

from __future__ import annotations

from edgerun.core.errors import UsageError

from ..llm import zoo as _llm_zoo
from .base import Dataset, ModelSpec, load_factory


def _digits_dataset(size: int | None = None) -> Dataset:
    def load():
        from .digits import load_split

        return load_split(size)

    shape = f"8x8 upscaled to {size}x{size}" if size else "8x8"
    return Dataset(name=f"sklearn-digits ({shape}, held-out 20%)", load=load)


def _lazy(module: str, func: str, *args):
    def build():
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{module}"), func)(*args)

    return build


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("mobilenet_v2", "MobileNetV2 (torchvision definition, random weights), 224x224", "classification",
                  _lazy("vision", "torchvision_model", "mobilenet_v2"), origin="torchvision.models.mobilenet_v2"),
        ModelSpec("mobilenet_v2_035", "MobileNetV2 x0.35 (torchvision, random weights), 96x96 -> 10 classes: "
                  "microcontroller-sized", "classification", _lazy("vision", "mobilenet_v2_035"),
                  origin="torchvision.models.mobilenet_v2(width_mult=0.35)"),
        ModelSpec("mobilenet_v3_small", "MobileNetV3-Small (torchvision, random weights), 224x224", "classification",
                  _lazy("vision", "torchvision_model", "mobilenet_v3_small"), origin="torchvision.models.mobilenet_v3_small"),
        ModelSpec("resnet18", "ResNet-18 (torchvision, random weights), 224x224", "classification",
                  _lazy("vision", "torchvision_model", "resnet18"), origin="torchvision.models.resnet18"),
        ModelSpec("vit_small", "small Vision Transformer: 64x64 input, 8x8 patches, 4 layers, 128 wide",
                  "classification", _lazy("vision", "small_vit"), origin="torchvision VisionTransformer"),
        ModelSpec("text_encoder", "transformer text encoder: 32 token ids -> 128-d embedding, 2 layers",
                  "embedding", _lazy("text", "text_encoder"), origin="edgerun.export.zoo.text"),
        ModelSpec("digits_cnn", "small CNN trained here on scikit-learn's 8x8 digits (real accuracy)",
                  "classification", _lazy("digits", "digits_cnn"), dataset=_digits_dataset(),
                  origin="edgerun.export.zoo.digits"),
        ModelSpec("digits_mobilenet_v2", "MobileNetV2 (torchvision, width 1.0) trained here on scikit-learn's digits "
                  "upscaled to 32x32 (real accuracy, millisecond latency)", "classification",
                  _lazy("digits", "digits_mobilenet_v2"), dataset=_digits_dataset(32),
                  origin="torchvision.models.mobilenet_v2, edgerun.export.zoo.digits"),
        ModelSpec("ds_cnn", "MLPerf Tiny keyword spotting: DS-CNN (small), 49x10 MFCC -> 12 classes, random weights",
                  "classification", _lazy("mlperf_tiny", "build", "ds_cnn"), origin="MLPerf Tiny (KWS)"),
        ModelSpec("resnet8", "MLPerf Tiny image classification: ResNet-8, CIFAR-10 shape 32x32x3, random weights",
                  "classification", _lazy("mlperf_tiny", "build", "resnet8"), origin="MLPerf Tiny (IC)"),
        ModelSpec("mobilenet_v1_025", "MLPerf Tiny visual wake words: MobileNetV1 x0.25, 96x96x3 -> 2 classes, "
                  "random weights", "classification", _lazy("mlperf_tiny", "build", "mobilenet_v1_025"),
                  origin="MLPerf Tiny (VWW)"),
        ModelSpec("autoencoder_ad", "MLPerf Tiny anomaly detection: deep FC autoencoder on 640 features, random "
                  "weights", "reconstruction", _lazy("mlperf_tiny", "build", "autoencoder_ad"),
                  origin="MLPerf Tiny (AD)"),
        _llm_zoo.smollm2_spec(),
    )
}


def get_model(name: str) -> ModelSpec:
    if name in MODELS:
        return MODELS[name]
    if name.endswith(".gguf"):
        return _llm_zoo.gguf_spec(name)
    if ":" in name:
        return load_factory(name)
    raise UsageError(f"unknown model {name!r}.",
                     hint=f"Zoo models: {', '.join(MODELS)}; or give a user model as 'package.module:factory' "
                          "or a Llama GGUF as 'path/to/model.gguf'.")


__all__ = ["MODELS", "ModelSpec", "Dataset", "get_model", "load_factory"]
