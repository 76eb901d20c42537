"""Vision models: torchvision definitions with seeded random weights, and a small ViT."""

from __future__ import annotations

import torch

IMAGENET_INPUT = (1, 3, 224, 224)


def _settle_batchnorm(model: torch.nn.Module, shape: tuple[int, ...], seed: int, batches: int = 4,
                      momentum: float = 0.1) -> None:
    """Give a randomly initialised network realistic BatchNorm statistics.

    Fresh BatchNorm layers have running mean 0 / var 1 whatever their input, so activations of a
    random deep CNN drift in scale from layer to layer — unlike any trained network. A few forward
    passes in train mode on random images set the statistics the way training would, which keeps
    quantization ranges meaningful. No weight changes (no gradients). The momentum is pinned
    while settling: MobileNetV3 trains with 0.01, at which four batches would move the statistics
    only 4 % of the way, leaving activations shrunk below int8's smallest scale.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = momentum
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn((8, *shape[1:]), generator=gen))
    for m, value in zip(norms, saved):
        m.momentum = value
    model.eval()


def torchvision_model(name: str, seed: int = 0):
    """A torchvision classifier by name, seeded random weights, settled BatchNorm, ImageNet-sized input."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    # torchvision's N(0, 0.01) classifier init gives logits of ~1e-4, below the XNNPACK quantizer's
    # smallest activation scale (2**-12): int8 could then only say "about zero". A
    # variance-preserving init gives logits of a trained network's order instead.
    for m in getattr(model, "classifier", torch.nn.Sequential()).modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)
            torch.nn.init.zeros_(m.bias)
    _settle_batchnorm(model, IMAGENET_INPUT, seed)
    example = (torch.randn(IMAGENET_INPUT, generator=torch.Generator().manual_seed(seed)),)
    return model.eval(), example


MCU_VISION_INPUT = (1, 3, 96, 96)


def mobilenet_v2_035(seed: int = 0):
    """MobileNetV2 at width 0.35 on 96x96x3 with 10 classes: the microcontroller-sized MobileNetV2 (the Ethos-U
    and Cortex-M figures of issue 24 are for it). torchvision's definition, seeded random weights, the
    variance-preserving classifier init and settled BatchNorm of :func:`torchvision_model`."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(seed)
    model = mobilenet_v2(width_mult=0.35, num_classes=10)
    for m in model.classifier.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)
            torch.nn.init.zeros_(m.bias)
    _settle_batchnorm(model, MCU_VISION_INPUT, seed)
    example = (torch.randn(MCU_VISION_INPUT, generator=torch.Generator().manual_seed(seed)),)
    return model.eval(), example


def small_vit(seed: int = 0):
    """A ViT small enough for a microcontroller-class budget: 64x64 input, 8x8 patches, 4 layers."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.backends.mha.set_fastpath_enabled(False)  # else a _transformer_encoder_layer_fwd op the runtime lacks
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=64, patch_size=8, num_layers=4, num_heads=4, hidden_dim=128,
                              mlp_dim=256, num_classes=100)
    # torchvision zero-initialises the classification head (right for fine-tuning, useless here:
    # every output would be exactly 0 and any program would "match" eager perfectly).
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    example = (torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed)),)
    return model.eval(), example
