from .resnet import cifar_resnet, resnet20, resnet32, resnet32_wide, resnet56
from .vit import ViT, vit_tiny

MODELS = {"resnet20": resnet20, "resnet32": resnet32, "resnet56": resnet56,
          "resnet32_wide": resnet32_wide, "vit_tiny": vit_tiny}

__all__ = ["MODELS", "ViT", "cifar_resnet", "resnet20", "resnet32", "resnet32_wide", "resnet56", "vit_tiny"]
