import os

# Triton kernels run on CPU tensors through the interpreter when no GPU is
# present; the variable must be set before triton is first imported.
try:
    import torch
    _cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _cuda = False
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402  (after TRITON_INTERPRET, which must precede any triton import)


@pytest.fixture(params=["cpu", "cuda"] if _cuda else ["cpu"])
def device(request):
    """The devices the optimizer tests run on: the CPU (the C++ kernels), and
    CUDA (the Triton kernels compiled) where a GPU is present."""
    return torch.device(request.param)
