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
