"""Seeds: what they may be, and how a step's seeds derive from the base seed.

Every random draw of the package (the directions of the stream, ESAM's and
SSAM's draws) comes from a seed derived from (base seed, step, index), so a
resumed run replays the same draws and every rank of a job agrees without
communicating.
"""
MAX_SEED = 2**63
_M64 = (1 << 64) - 1


def check_seed(seed: object, name: str = "seed") -> None:
    """Seeds are non-negative 63-bit Python ints (the stream's key is 64 bits; the top one is kept free)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, 2**63), got {seed!r}")


def _mix64(x: int) -> int:
    # splitmix64's finaliser: consecutive inputs give unrelated outputs
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def derived_seed(seed: int, step: int, index: int) -> int:
    """The 63-bit seed of draw `index` at optimizer step `step`."""
    return _mix64(_mix64(_mix64(seed) ^ step) ^ index) >> 1
