from .resnet import cifar_resnet, resnet20, resnet32, resnet32_wide, resnet56

MODELS = {"resnet20": resnet20, "resnet32": resnet32, "resnet56": resnet56,
          "resnet32_wide": resnet32_wide}

__all__ = ["MODELS", "cifar_resnet", "resnet20", "resnet32", "resnet32_wide", "resnet56"]
