"""The C++ and Triton streams side by side (each is also checked against the
reference in its own file): normals within 1e-5, at offsets crossing 2**32."""
import pytest
import torch

from zosam_kernels import ops
from zosam_kernels.ops import triton_kernels

pytestmark = pytest.mark.skipif(not ops.HAS_CPU_EXTENSION, reason="C++ extension not built")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # cpu: the Triton interpreter


@pytest.mark.parametrize("seed", [0, 2**40 + 7, 2**63 - 1])
@pytest.mark.parametrize("numel,offset", [(1, 0), (7, 3), (4099, 2**32 - 5), (1030, 2**34 - 2)])
def test_cpp_and_triton_streams_agree(seed, numel, offset):
    cpp = ops.gaussian(seed, numel, offset, device="cpu")
    tri = torch.full((numel,), float("nan"), device=DEVICE)
    triton_kernels.fill_gaussian_(tri, seed, offset)
    torch.testing.assert_close(tri.cpu(), cpp, rtol=0, atol=1e-5)
