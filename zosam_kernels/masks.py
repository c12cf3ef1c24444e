"""Sparsity masks for optimized parameters: validation and per-tensor application.

A mask is a bool tensor of its parameter's shape and device; False marks a
pruned weight, which every optimizer of the package keeps exactly 0.

The `masks` argument of an optimizer is either a fixed mapping parameter ->
bool tensor (read once), or a masking object (zosam_kernels.sparse) with
`param_masks()` and an integer `version` that it bumps on every topology
change; optimizers re-read such an object at the start of a step whenever its
version moved, so drop-and-grow reaches them without a call from the user.
"""
import torch


def normalize_masks(params, masks):
    """Validate `masks` (a mapping parameter -> bool tensor, or None) against
    `params` and return a dict keyed by id(param); unmasked parameters are dense."""
    if masks is None:
        return {}
    if hasattr(masks, "param_masks"):   # a sparse-training masking object
        masks = masks.param_masks()
    if not hasattr(masks, "items"):
        raise TypeError(f"masks must be a mapping from parameter to bool tensor, got {type(masks).__name__}")
    by_id = {id(p): p for p in params}
    out = {}
    for p, m in masks.items():
        if id(p) not in by_id:
            raise ValueError("masks has a key that is not one of the optimized parameters")
        if not torch.is_tensor(m) or m.dtype != torch.bool:
            raise TypeError(f"masks: the mask of a parameter of shape {tuple(p.shape)} must be a bool "
                            f"tensor, got {getattr(m, 'dtype', type(m).__name__)}")
        if m.shape != p.shape:
            raise ValueError(f"masks: mask shape {tuple(m.shape)} differs from its parameter's "
                             f"shape {tuple(p.shape)}")
        if m.device != p.device:
            raise ValueError(f"masks: mask is on {m.device} but its parameter is on {p.device}")
        out[id(p)] = m
    return out


class MaskSource:
    """Tells whether a `masks` argument has changed since it was last read."""

    def __init__(self, masks):
        self.version = getattr(masks, "version", None)
        # a fixed mapping is read once and not kept: it may be large, and the caller owns it
        self.masks = masks if self.version is not None else None

    def changed(self):
        """True once per change of a masking object's version (never for a fixed mapping)."""
        version = getattr(self.masks, "version", None)
        if version == self.version:
            return False
        self.version = version
        return True

    def observe_gradients(self):
        """Show a masking object the dense gradients before they are masked, if it
        wants them (RigL's growth); a fixed mapping has nothing to observe."""
        observe = getattr(self.masks, "observe_gradients", None)
        if observe is not None:
            observe()


class ParamMasks:
    """Masks applied tensor by tensor (the SAM family and the reference backend)."""

    def __init__(self, params, masks):
        self._all = list(params)
        self.source = MaskSource(masks)
        self._load(masks)

    def _load(self, masks):
        by_id = normalize_masks(self._all, masks)
        self.params = [p for p in self._all if id(p) in by_id]
        self.masks = [by_id[id(p)].clone() for p in self.params]
        self._by_id = {id(p): m for p, m in zip(self.params, self.masks)}

    def refresh_(self):
        """Re-read a masking object whose topology changed, and zero the newly pruned weights."""
        if self.source.changed():
            self._load(self.source.masks)
            self.mask_params_()

    def __bool__(self):
        return bool(self.params)

    def get(self, p):
        return self._by_id.get(id(p))

    def observe_gradients(self):
        self.source.observe_gradients()

    @torch.no_grad()
    def mask_params_(self):
        if self.params:
            torch._foreach_mul_([p.data for p in self.params], self.masks)

    @torch.no_grad()
    def mask_grads_(self):
        pairs = [(p.grad, m) for p, m in zip(self.params, self.masks) if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])
