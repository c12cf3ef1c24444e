"""Instruments for the paper's claims, measured on a model at its current weights
and restricted to the active weights of a sparse model: the variance of the
mini-batch gradient (gradvar), the curvature of the loss (hessian: top
eigenvalue and trace) and the loss along filter-normalised random directions
(landscape), the aim of a SAM-family step (ascent) and how far SAM's update
goes down the gradient (sam_step). Each leaves the model as it found it:
weights, buffers, modes and torch's global random state. And robustness
without the CIFAR-10-C files: its noise, blur, contrast and brightness
corruptions in torch (corruptions).
"""
from .ascent import step_with_ascent_probe
from .corruptions import CORRUPTIONS, CorruptedDataset, corrupt
from .gradvar import gradient_variance
from .hessian import hessian_trace, top_eigenvalue
from .landscape import landscape_1d, landscape_2d, plot_landscape, random_direction
from .sam_step import sam_along_gradient

__all__ = ["CORRUPTIONS", "CorruptedDataset", "corrupt", "gradient_variance", "hessian_trace", "landscape_1d",
           "landscape_2d", "plot_landscape", "random_direction", "sam_along_gradient", "step_with_ascent_probe",
           "top_eigenvalue"]
