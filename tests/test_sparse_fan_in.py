"""The sparse initialisation (sparse/fan_in.py): every unit's active weights
times sqrt(n / a), checked unit by unit in float64; the dense init's signal
variance restored; and zosam-train's --sparse-init and --sparse random."""
import os

import pytest
import torch

from zosam_kernels import sparse
from zosam_kernels.train.cli import train as zosam_train


def mixed_model():
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"lin": torch.nn.Linear(30, 7), "conv": torch.nn.Conv2d(4, 5, 3),
                                "conv1d": torch.nn.Conv1d(3, 6, 5), "gru": torch.nn.GRU(8, 4)})


def test_each_unit_is_scaled_to_its_active_fan_in():
    model = mixed_model()
    masking = sparse.Masking(model, 0.2, "erk", seed=1)
    emptied = masking.masks["lin.weight"].clone()
    emptied[3] = False                                   # a unit with no active weight is left alone
    masking.update_({"lin.weight": emptied})
    before = {n: p.detach().double().clone() for n, p in masking.params.items()}
    sparse.rescale_to_fan_in_(masking)
    for n, p in masking.params.items():
        mask = masking.masks[n]
        for i in range(p.shape[0]):
            unit, m = before[n][i].reshape(-1), mask[i].reshape(-1)
            a = int(m.sum())
            expected = unit * (m.numel() / a) ** 0.5 if a else unit
            torch.testing.assert_close(p.detach()[i].reshape(-1).double(), expected, rtol=1e-6, atol=0)
        assert (p.detach()[~mask] == 0).all()
    assert (masking.params["lin.weight"][3] == 0).all()


def test_the_dense_signal_variance_is_restored():
    """A 4000-input layer at 5 % density: the pre-activations' variance is about 5 % of
    the dense layer's before, and the dense layer's after (within sampling error)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4000, 200, bias=False)
    x = torch.randn(512, 4000)
    dense = layer(x).var().item()
    masking = sparse.Masking(layer, 0.05, "uniform", seed=2)
    with torch.no_grad():
        assert layer(x).var().item() / dense == pytest.approx(0.05, rel=0.1)
        sparse.rescale_to_fan_in_(masking)
        assert layer(x).var().item() / dense == pytest.approx(1.0, rel=0.1)


def test_zosam_train_sparse_init_and_a_fixed_random_topology(tmp_path):
    """Same seed, learning rate 1e-30 (below every weight's float32 resolution; zosam-train
    refuses 0): the checkpoint holds the first weights. --sparse-init fan-in
    gives the standard start's weights times sqrt(n / a) per unit, on the same random topology,
    which --sparse random never changes."""
    common = ["--model", "resnet20", "--train-size", "64", "--test-size", "32", "--batch-size", "32",
              "--epochs", "2", "--progress", "off", "--optimizer", "sgd", "--lr", "1e-30", "--weight-decay", "0",
              "--sparse", "random",
              "--density", "0.2"]
    ckpts = {}
    for init in ("standard", "fan-in"):
        out = str(tmp_path / init)
        zosam_train([*common, "--sparse-init", init, "--out", out])
        ckpts[init] = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    masks = ckpts["standard"]["sparsity"]["masking"]["masks"]
    for n, mask in masks.items():
        assert torch.equal(mask, ckpts["fan-in"]["sparsity"]["masking"]["masks"][n])
        units = mask.reshape(mask.shape[0], -1)
        factor = (units.shape[1] / units.sum(1).clamp(min=1).double()).sqrt()
        standard = ckpts["standard"]["model"][n].double().reshape(mask.shape[0], -1)
        torch.testing.assert_close(ckpts["fan-in"]["model"][n].double().reshape(mask.shape[0], -1),
                                   standard * factor[:, None], rtol=1e-6, atol=0)
        assert (standard[~units] == 0).all() and (standard[units] != 0).all()
    assert ckpts["standard"]["sparsity"]["masking"]["dense_gradient_steps"] == 0


@pytest.mark.parametrize("method", ["dense", "lth"])
def test_sparse_init_needs_a_sparse_start(tmp_path, method, capsys):
    with pytest.raises(SystemExit):
        zosam_train(["--sparse", method, "--sparse-init", "fan-in", "--out", str(tmp_path / "run")])
    assert "--sparse-init fan-in" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")
