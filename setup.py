"""The C++ extension of zosam_kernels: zosam_kernels._C, the CPU kernels (csrc/).
The package's metadata is in pyproject.toml; this file only adds the extension.

The extension is optional: if it cannot be compiled (no compiler, no OpenMP,
torch missing at build time), the install still succeeds and the CPU ops fall
back to the numpy reference (zosam_kernels/ops/library.py warns at import).
The build needs the already-installed torch, so install without build
isolation, otherwise pip would fetch a second torch into a throwaway env:

    pip install -e . --no-build-isolation
"""
import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
EXT_NAME = "zosam_kernels._C"

# Results must be reproducible, so no -ffast-math: -ffp-contract=off keeps
# a*b+c from becoming an FMA (the normals would then depend on the target),
# and -fno-math-errno lets sqrt vectorise. Portable by default: the extension
# (and a wheel of it) runs on any CPU of its architecture. ZOSAM_NATIVE=1 adds
# -march=native: the Philox and Box-Muller loops are compute bound, and on an
# AVX-512 machine (Zen 4) they run 2x faster than with AVX2 and 2.8x faster
# than with the x86-64 baseline, but the extension is then tied to CPUs with
# the building machine's instruction set (an illegal instruction elsewhere).
NATIVE = os.environ.get("ZOSAM_NATIVE", "0") not in ("", "0")
CXX_FLAGS = ["-O3", *(["-march=native"] if NATIVE else []), "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
LINK_FLAGS = ["-fopenmp"]


def _warn_no_extension(reason):
    bar = "=" * 78
    print(f"\n{bar}\nWARNING: zosam_kernels: the C++ extension {EXT_NAME} was not built:\n"
          f"  {reason}\n"
          "The package is installed without it; CPU ops fall back to the numpy\n"
          "reference (correct, but slow). Install a C++ compiler with OpenMP and\n"
          f"reinstall to get the fast kernels.\n{bar}\n", file=sys.stderr)


def _extension_build():
    """(ext_modules, cmdclass) for the optional extension, or empty ones when
    torch's build helpers are unavailable."""
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as e:  # torch missing or broken at build time
        _warn_no_extension(f"torch.utils.cpp_extension is unavailable ({e!r})")
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """BuildExtension that turns a failed compile or link into a warning."""

        def run(self):
            try:
                super().run()
            except Exception as e:  # e.g. ABI/compiler checks that run before compiling
                _warn_no_extension(f"{type(e).__name__}: {e}")

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # CompileError, LinkError, ninja's RuntimeError, ...
                _warn_no_extension(f"{type(e).__name__}: {e}")

        def get_outputs(self):
            # Only report files that exist, so that installing (and the
            # editable-wheel step) does not go looking for a missing _C.
            return [p for p in super().get_outputs() if os.path.exists(p)]

    sources = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))
    ext = CppExtension(
        EXT_NAME,
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=LINK_FLAGS,
    )
    return [ext], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension_build()

setup(ext_modules=ext_modules, cmdclass=cmdclass)
