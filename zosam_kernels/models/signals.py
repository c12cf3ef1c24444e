"""Networks for 1-D signals of shape (channels, length), MNIST-1D's (1, 40):
an MLP and a 1-D CNN, without normalisation layers by default, so that the
whole network is its weights (what a sparse mask or a perturbation ε acts
on); the CNN with norm=True puts a BatchNorm after each convolution (the
layers SAM-ON perturbs).

They take the item shape from the data (`input_shape`), and their width as a
keyword (zosam-train's --model-kwargs): a wider net fits noisy labels sooner,
and a sparse one needs the width to fit them at all.
"""
import math

from torch import nn


def _check(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _signal_shape(input_shape):
    shape = tuple(input_shape)
    if len(shape) != 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape must be (channels, length) of positive ints, got {input_shape!r}")
    return shape


class MLP1d(nn.Sequential):
    """Flatten, then `depth` hidden layers of `width` ReLU units, then a linear head."""

    def __init__(self, num_classes=10, input_shape=(1, 40), width=512, depth=2):
        _check("width", width)
        _check("depth", depth)
        layers, features = [nn.Flatten()], math.prod(_signal_shape(input_shape))
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        super().__init__(*layers, nn.Linear(features, num_classes))


class CNN1d(nn.Sequential):
    """`depth` ReLU Conv1d layers of `width` channels (kernel 5, 'same' padding),
    each after the first halving the length (stride 2), then a linear head
    over the flattened features: the position of a feature stays visible to
    the head, as MNIST-1D's digits differ in where their parts lie. norm: a
    BatchNorm1d between each convolution and its ReLU."""

    KERNEL = 5

    def __init__(self, num_classes=10, input_shape=(1, 40), width=32, depth=3, norm=False):
        _check("width", width)
        _check("depth", depth)
        if not isinstance(norm, bool):
            raise ValueError(f"norm must be true or false, got {norm!r}")
        channels, length = _signal_shape(input_shape)
        layers = []
        for i in range(depth):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv1d(channels, width, self.KERNEL, stride, padding=self.KERNEL // 2),
                       *([nn.BatchNorm1d(width)] if norm else []), nn.ReLU()]
            channels = width
            length = (length - 1) // stride + 1     # 'same' padding: the length over the stride, rounded up
        super().__init__(*layers, nn.Flatten(), nn.Linear(width * length, num_classes))


# name -> class; each takes (num_classes, input_shape, **keywords)
SIGNAL_MODELS = {"mlp1d": MLP1d, "cnn1d": CNN1d}
