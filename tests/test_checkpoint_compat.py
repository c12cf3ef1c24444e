"""Checkpoints written by the optimizer family before the engine redesign
(tests/data/legacy_checkpoints.pt, made by tests/legacy_checkpoints.py
at commit 245faba) load into today's optimizers and continue as that code did.

Bit for bit on the CPU that wrote the file; another CPU's kernels round the same
float32 sums differently (up to 1.5e-7 apart after the 3 steps on an Intel Xeon,
for a file written on another machine), while a continuation that lost the
optimizer's state ends 0.1 or more away. So the comparison allows 1e-6."""

import pytest
import torch

import zosam_kernels as zk
from legacy_checkpoints import BASE, CASES, PATH, STEPS, closure_of, problem

LEGACY = torch.load(PATH, weights_only=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_legacy_checkpoint_continues_as_its_code_did(name):
    case = LEGACY[name]
    model, _, _, _ = problem()
    masks = dict(zip([model[0].weight, model[3].weight], case["masks"]))
    opt = getattr(zk, case["cls"])(model.parameters(), torch.optim.SGD, masks=masks, **case["kwargs"],
                                   **BASE)
    model.load_state_dict(case["model"])
    opt.load_state_dict(case["opt"])
    closure = closure_of(model, case["x"], case["y"])
    for _ in range(STEPS):
        opt.step(closure)
    for key, expected in case["after"].items():
        torch.testing.assert_close(model.state_dict()[key], expected, rtol=0, atol=1e-6, msg=key)


def test_every_family_member_has_a_legacy_checkpoint():
    classes = {m.cls.__name__ for m in zk.optim.FAMILY.values() if m.cls is not None}
    assert {case[0] for case in CASES.values()} == classes
