// Python module init for zosam_kernels._C. The module has no Python-level
// members: importing it loads the shared library, whose static initialisers
// (TORCH_LIBRARY_* in ops.cpp) register the kernels with the dispatcher.
// Plain CPython API instead of PYBIND11_MODULE: it keeps pybind11 and
// torch/extension.h (the slowest headers to compile) out of the build.
#include <Python.h>

static PyModuleDef zosam_c_module = {
    PyModuleDef_HEAD_INIT,
    "_C",  // the extension is built as zosam_kernels._C (setup.py)
    "Registers the zosam C++ CPU kernels as torch.ops.zosam.* on import.",
    -1,
    nullptr,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&zosam_c_module); }
