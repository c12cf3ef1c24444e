from .resnet import cifar_resnet, resnet20, resnet32, resnet32_wide, resnet56
from .signals import CNN1d, MLP1d, SIGNAL_MODELS
from .vit import ViT, vit_tiny

# the image models, each built from num_classes alone; SIGNAL_MODELS, the 1-D ones, also take the
# item shape, so that the scripts choosing from MODELS for CIFAR-shaped data are offered none of them
MODELS = {"resnet20": resnet20, "resnet32": resnet32, "resnet56": resnet56,
          "resnet32_wide": resnet32_wide, "vit_tiny": vit_tiny}

__all__ = ["CNN1d", "MLP1d", "MODELS", "SIGNAL_MODELS", "ViT", "cifar_resnet", "resnet20", "resnet32",
           "resnet32_wide", "resnet56", "vit_tiny"]
