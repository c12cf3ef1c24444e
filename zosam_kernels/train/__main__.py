"""python -m zosam_kernels.train: the same as the zosam-train command."""
from .cli import main

main()
