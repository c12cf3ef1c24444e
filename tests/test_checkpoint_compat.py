"""Checkpoints written by the optimizer family before the engine redesign
(tests/data/legacy_checkpoints.pt, made by tests/legacy_checkpoints.py
at commit 245faba) load into today's optimizers and continue bit for bit."""

import pytest
import torch

import zosam_kernels as zk
from legacy_checkpoints import BASE, CASES, PATH, STEPS, closure_of, problem

LEGACY = torch.load(PATH, weights_only=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_legacy_checkpoint_continues_bit_for_bit(name):
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
        assert torch.equal(model.state_dict()[key], expected), key


def test_every_family_member_has_a_legacy_checkpoint():
    classes = {m.build.__name__ for m in zk.optim.FAMILY.values() if isinstance(m.build, type)}
    assert {case[0] for case in CASES.values()} == classes
