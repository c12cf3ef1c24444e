"""zosam-train --data mnist1d, the testbed where label noise is memorised:
the generator called without the network, its splits against the
generator's own unsplit output, the label noise of train and validation
counted against the clean labels, the 1-D models (shapes and parameter
counts in closed form, masks on their Conv1d weights, a few steps of SGD,
SAM and ZO-SAM, dense and under SNIP and RigL), the per-epoch fit of clean
and noisy examples recounted from the checkpoint's weights, and the model
selection at the best validation epoch against a hand computation."""
import json
import os
import random
import socket
import sys

import numpy as np
import pytest
import torch

from zosam_kernels import sparse
from zosam_kernels.models import CNN1d, MLP1d
from zosam_kernels.train.build import make_model
from zosam_kernels.train.cli import train as zosam_train
from zosam_kernels.train.datasets import MNIST1D_SEED, MNIST1D_SIZES, NoisyLabels, load
from zosam_kernels.train.outputs import write_summary

# 96 training examples in 3 steps of 32, 32 validation, 48 test: a run takes well under a second
SIZES = dict(train_size=96, val_size=32, test_size=48)
SMALL = ["--data", "mnist1d", "--train-size", "96", "--val-size", "32", "--test-size", "48",
         "--batch-size", "32", "--progress", "off"]


def items(dataset):
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.tensor(ys)


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run(tmp_path, *argv, out="run"):
    out = str(tmp_path / out)
    return out, zosam_train([*SMALL, "--out", out, *map(str, argv)])


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and no download: any connection, HTTP request or call of the
    package's download path fails the test; the working directory is an empty
    folder, where the download path would leave its pickle."""
    import mnist1d.data
    import requests

    def refuse(*args, **kwargs):
        raise AssertionError(f"network or download used: {args!r}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(mnist1d.data, "get_dataset", refuse)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def generated(count):
    """The generator's whole output for `count` examples, unsplit: the reference
    the splits are checked against."""
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = count, MNIST1D_SEED, 1.0
    made = make_dataset(args)
    return torch.tensor(made["x"], dtype=torch.float32), torch.tensor(made["y"])


# ---- the data ---------------------------------------------------------------------------

def test_generated_offline_split_in_order_with_nothing_lost(offline):
    numpy_before, python_before = np.random.get_state()[1].copy(), random.getstate()
    data = load("mnist1d", train_size=21, val_size=7, test_size=5)       # 33: 40 generated
    assert os.listdir(offline) == []
    # the global generators the package seeds are given back as they were
    assert np.array_equal(np.random.get_state()[1], numpy_before) and random.getstate() == python_before
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (21, 7, 5, 10)
    assert data.image_shape == (1, 40) and not data.augmented and (data.mean, data.std) == ((0.0,), (1.0,))
    x, y = generated(40)
    for split, rows in (("train", slice(0, 21)), ("val", slice(21, 28)), ("test", slice(28, 33))):
        xs, ys = items(getattr(data, split))
        assert xs.dtype == torch.float32 and xs.shape[1:] == (1, 40)
        assert torch.equal(xs[:, 0], x[rows]) and torch.equal(ys, y[rows]), split


def test_splits_are_disjoint_balanced_in_all_and_the_same_for_every_seed():
    data = load("mnist1d", train_size=60, val_size=20, test_size=20, seed=0)
    parts = [items(getattr(data, s)) for s in ("train", "val", "test")]
    signals = torch.cat([xs for xs, _ in parts]).flatten(1)
    assert len({tuple(s.tolist()) for s in signals}) == 100
    # 100 examples: the generator made 10 of each digit, and all of them are used
    assert torch.cat([ys for _, ys in parts]).bincount(minlength=10).tolist() == [10] * 10
    # the standardisation is over the whole generated set
    assert abs(float(signals.mean())) < 1e-5 and abs(float(signals.std(correction=0)) - 1) < 1e-5
    other = load("mnist1d", train_size=60, val_size=20, test_size=20, seed=5)
    for split in ("train", "val", "test"):
        a, b = items(getattr(data, split)), items(getattr(other, split))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_default_sizes(monkeypatch):
    import mnist1d.data
    asked = {}
    monkeypatch.setattr(mnist1d.data, "make_dataset",
                        lambda args: asked.update(n=args.num_samples, split=args.train_split) or {
                            "x": np.zeros((4000, 40)), "y": np.zeros(4000, dtype=np.int64),
                            "x_test": np.zeros((5000, 40)), "y_test": np.zeros(5000, dtype=np.int64)})
    data = load("mnist1d")
    assert MNIST1D_SIZES == (3000, 1000, 5000) and asked["n"] == 9000 and int(9000 * asked["split"]) == 4000
    assert (len(data.train), len(data.val), len(data.test)) == MNIST1D_SIZES


def test_label_noise_changes_exactly_its_share_of_train_and_validation_and_none_of_test():
    clean = load("mnist1d", train_size=200, val_size=100, test_size=50)
    noisy = load("mnist1d", train_size=200, val_size=100, test_size=50, label_noise=0.3, seed=1)
    changed = {}
    for split, share in (("train", 60), ("val", 30), ("test", 0)):
        before, after = items(getattr(clean, split))[1], items(getattr(noisy, split))[1]
        changed[split] = (before != after).nonzero().flatten()
        assert len(changed[split]) == share, split
        assert ((after >= 0) & (after < 10)).all()
    assert isinstance(noisy.train, NoisyLabels) and isinstance(noisy.val, NoisyLabels)
    assert not isinstance(noisy.test, NoisyLabels)
    assert torch.equal(noisy.train.changed.nonzero().flatten(), changed["train"])
    assert torch.equal(noisy.val.changed.nonzero().flatten(), changed["val"])
    # validation's draws are not training's: another set of positions among the first 100
    assert set(changed["val"].tolist()) != set(i for i in changed["train"].tolist() if i < 100)
    again = load("mnist1d", train_size=200, val_size=100, test_size=50, label_noise=0.3, seed=2)
    assert not torch.equal(again.train.changed, noisy.train.changed)


def test_errors_name_the_option(monkeypatch):
    with pytest.raises(ValueError, match="--val-size: --data synthetic has no validation split"):
        load("synthetic", train_size=10, test_size=10, val_size=5)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="val_size must be"):
            load("mnist1d", val_size=bad)
    with pytest.raises(ValueError, match="reads no --data-dir"):
        load("mnist1d", "/data")
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)       # the import now fails, as when absent
    with pytest.raises(ImportError, match="pip install mnist1d==0.0.2.post1"):
        load("mnist1d", **SIZES)


# ---- the models -------------------------------------------------------------------------

def test_mlp_and_cnn_shapes_and_parameter_counts():
    mlp = MLP1d(10, (1, 40), width=64, depth=3)
    assert sum(p.numel() for p in mlp.parameters()) == (40 * 64 + 64) + 2 * (64 * 64 + 64) + (64 * 10 + 10)
    assert mlp(torch.randn(5, 1, 40)).shape == (5, 10)
    # lengths 40 -> 40 -> 20 -> 10 (kernel 5, padding 2, strides 1, 2, 2); odd: 41 -> 41 -> 21 -> 11
    for length, last in ((40, 10), (41, 11)):
        cnn = CNN1d(7, (2, length), width=8, depth=3)
        convs = (2 * 8 * 5 + 8) + 2 * (8 * 8 * 5 + 8)
        assert sum(p.numel() for p in cnn.parameters()) == convs + 8 * last * 7 + 7
        assert cnn(torch.randn(3, 2, length)).shape == (3, 7)
    for bad in (dict(width=0), dict(depth=1.5), dict(input_shape=(3, 32, 32))):
        with pytest.raises(ValueError, match="width|depth|input_shape"):
            MLP1d(10, **{"input_shape": (1, 40), **bad})
    normed = CNN1d(7, (2, 40), width=8, depth=3, norm=True)   # a BatchNorm (scale and shift) per conv
    norms = [m for m in normed if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 3 and all(m.num_features == 8 for m in norms)
    assert sum(p.numel() for p in normed.parameters()) == convs + 8 * 10 * 7 + 7 + 3 * 2 * 8
    assert all(isinstance(normed[i - 1], torch.nn.Conv1d) for i, m in enumerate(normed) if m in norms)
    with pytest.raises(ValueError, match="norm"):
        CNN1d(7, (2, 40), norm="yes")


def test_models_and_data_must_agree():
    with pytest.raises(ValueError, match=r"--model resnet20 takes images \(C, H, W\), but the data's items "
                                         r"have shape \(1, 40\): choose mlp1d, cnn1d"):
        make_model("resnet20", 10, {}, (1, 40))
    with pytest.raises(ValueError, match="--model timm:resnet18 takes images"):
        make_model("timm:resnet18", 10, {}, (1, 40))
    with pytest.raises(ValueError, match="--model mlp1d takes 1-D signals"):
        make_model("mlp1d", 10, {}, (3, 32, 32))
    with pytest.raises(ValueError, match=r"--model-kwargs \['heads'\]: not an option of --model cnn1d; "
                                         r"it takes depth, norm, width"):
        make_model("cnn1d", 10, {"heads": 2}, (1, 40))
    model = make_model("mlp1d", 10, {"width": 16}, (1, 40))
    assert [p.shape for p in model.parameters()][:2] == [(16, 40), (16,)]


def test_masks_cover_the_conv1d_weights():
    cnn = CNN1d(10, (1, 40), width=8)
    masking = sparse.Masking(cnn, 0.2, seed=0)
    assert masking.names == ["0.weight", "2.weight", "4.weight", "7.weight"]   # three Conv1d, the head
    assert sum(int(m.sum()) for m in masking.masks.values()) == round(0.2 * sum(
        p.numel() for n, p in cnn.named_parameters() if n.endswith("weight")))


@pytest.mark.parametrize("model", ["mlp1d", "cnn1d"])
@pytest.mark.parametrize("method", ["dense", "snip", "rigl"])
@pytest.mark.parametrize("optimizer", ["sgd", "sam", "zosam"])
def test_zosam_train_runs_the_1d_models_dense_and_sparse(tmp_path, model, method, optimizer):
    kwargs = {"mlp1d": '{"width": 32}', "cnn1d": '{"width": 8}'}[model]
    sparsity = [] if method == "dense" else ["--sparse", method, "--density", "0.2", "--update-interval", "1"]
    out, summary = run(tmp_path, "--model", model, "--model-kwargs", kwargs, "--optimizer", optimizer,
                       "--epochs", "2", *sparsity)
    rows = metrics(out)
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) for r in rows)
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    torch.manual_seed(0)        # the run's initial weights: seed 0 before the model is built
    initial = make_model(model, 10, json.loads(kwargs), (1, 40)).state_dict()
    weights = ckpt["model"]
    assert all(not torch.equal(weights[n], initial[n]) for n in initial), "every tensor trained"
    if method == "dense":
        assert rows[-1]["density"] == 1.0
        return
    masks = ckpt["sparsity"]["masking"]["masks"]
    conv_or_linear = [n for n in weights if n.endswith("weight")]
    assert sorted(masks) == sorted(conv_or_linear)
    total = sum(weights[n].numel() for n in masks)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * total)
    for n, m in masks.items():
        assert (weights[n][~m] == 0).all(), n


@pytest.mark.parametrize("method", ["dense", "snip", "rigl"])
@pytest.mark.parametrize("optimizer", ["sgd", "sam", "zosam"])
def test_the_cnn_fits_a_batch_with_the_package_optimizers(method, optimizer):
    """The classes a user calls (zk.SAM, zk.ZOSAM, SGD; sparse.Masking with SNIP
    or RigL) on the 1-D CNN: 60 steps on one batch lower its loss, and the
    pruned weights, Conv1d ones included, stay exactly 0."""
    import torch.nn.functional as F

    import zosam_kernels as zk
    torch.manual_seed(0)
    model = CNN1d(10, (1, 40), width=16)
    data = load("mnist1d", **SIZES)
    x, y = items(data.train)
    loss = lambda: F.cross_entropy(model(x), y)      # noqa: E731
    masking = schedule = None
    if method == "snip":
        masking = sparse.Masking(model, 0.2, init="dense")
        sparse.prune_at_init_(masking, "snip", F.cross_entropy, [(x, y)])
    elif method == "rigl":
        masking = sparse.Masking(model, 0.2, seed=0)
        schedule = sparse.RigL(masking, total_steps=60, update_interval=10)
    base = dict(lr=0.1, momentum=0.9)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), **base)
    else:
        opt = getattr(zk, {"sam": "SAM", "zosam": "ZOSAM"}[optimizer])(
            model.parameters(), torch.optim.SGD, masks=masking, **base)
    if masking is not None:
        masking.attach(opt)
    with torch.no_grad():
        before = float(loss())
    initial = None if masking is None else {n: m.clone() for n, m in masking.masks.items()}
    for _ in range(60):
        if optimizer == "sgd":
            opt.zero_grad()
            loss().backward()
            opt.step()
        else:
            opt.step(loss)
        if schedule is not None:
            schedule.step()
    with torch.no_grad():
        assert float(loss()) < 0.8 * before
    if masking is not None:
        conv = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv1d)]
        assert all(f"{n}.weight" in masking.masks for n in conv) and len(conv) == 3
        for n, m in masking.masks.items():
            assert not m.all() and (dict(model.named_parameters())[n][~m] == 0).all(), n
    if method == "rigl":     # it moved active weights, Conv1d ones among them
        assert not torch.equal(masking.masks["0.weight"], initial["0.weight"])


# ---- the metrics ------------------------------------------------------------------------

def test_fit_of_clean_and_noisy_examples_and_validation_recounted_from_the_weights(tmp_path):
    out, summary = run(tmp_path, "--model", "mlp1d", "--model-kwargs", '{"width": 64}', "--optimizer", "sgd",
                       "--label-noise", "0.4", "--seed", "3", "--epochs", "2")
    rows = metrics(out)
    model = MLP1d(10, (1, 40), width=64)
    model.load_state_dict(torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["model"])
    model.eval()
    clean = load("mnist1d", **SIZES)
    given = load("mnist1d", **SIZES, label_noise=0.4, seed=3)
    x, true = items(clean.train)
    labels = items(given.train)[1]
    noisy = labels != true                              # the noise's work, read off the labels themselves
    assert int(noisy.sum()) == round(0.4 * 96)
    with torch.no_grad():
        right = model(x).argmax(1) == labels
        val_x, val_labels = items(given.val)
        test_x, test_labels = items(given.test)
        val_acc = 100 * float((model(val_x).argmax(1) == val_labels).double().mean())
        test_acc = 100 * float((model(test_x).argmax(1) == test_labels).double().mean())
    last = rows[-1]
    assert last["fit_clean"] == pytest.approx(100 * int(right[~noisy].sum()) / int((~noisy).sum()))
    assert last["fit_noisy"] == pytest.approx(100 * int(right[noisy].sum()) / int(noisy.sum()))
    assert last["val_acc"] == pytest.approx(val_acc) and last["test_acc"] == pytest.approx(test_acc)
    assert (summary["final_fit_clean"], summary["final_fit_noisy"]) == (last["fit_clean"], last["fit_noisy"])
    # the selection, by hand from metrics.jsonl
    accs = [r["val_acc"] for r in rows]
    chosen = accs.index(max(accs))
    assert summary["best_val_epoch"] == chosen + 1 and summary["best_val_acc"] == max(accs)
    assert summary["test_acc_at_best_val"] == rows[chosen]["test_acc"]
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["data"]["val_images"] == 32 and config["data"]["image_shape"] == [1, 40]


def test_best_validation_epoch_by_hand(tmp_path):
    """Validation 50, 70, 70, 60 in the last round: the first 70 (epoch 2), test 45
    there; final 65; the higher validation of the earlier LTH round is not the
    ticket's."""
    def row(round_, epoch, val, test, noisy=None):
        return {"epoch": 4 * round_ + epoch, "round": round_, "round_epoch": epoch, "val_acc": val,
                "test_acc": test, "fit_clean": 90.0, "fit_noisy": noisy, "density": 0.5}
    history = [row(0, 1, 99.0, 10.0), row(0, 2, 98.0, 11.0), row(0, 3, 97.0, 12.0), row(0, 4, 96.0, 13.0),
               row(1, 1, 50.0, 40.0), row(1, 2, 70.0, 45.0), row(1, 3, 70.0, 55.0), row(1, 4, 60.0, 65.0, 80.0)]
    summary = write_summary(str(tmp_path), history, 1.0, [50.0], True, {}, rounds=2)
    assert (summary["best_val_acc"], summary["best_val_epoch"], summary["test_acc_at_best_val"]) == (70.0, 2, 45.0)
    assert (summary["final_test_acc"], summary["best_test_acc"], summary["best_epoch"]) == (65.0, 65.0, 4)
    assert (summary["final_fit_clean"], summary["final_fit_noisy"]) == (90.0, 80.0)
    plain = write_summary(str(tmp_path), [{k: v for k, v in r.items() if k not in ("val_acc", "fit_clean",
                                                                                  "fit_noisy")}
                                          for r in history[4:]], 1.0, [50.0], True, {}, rounds=2)
    assert plain["best_val_epoch"] is None and plain["test_acc_at_best_val"] is None
    assert plain["final_fit_noisy"] is None


def test_fit_is_measured_with_label_noise_where_items_are_not_augmented(tmp_path):
    small = ["--model", "resnet20", "--train-size", "32", "--test-size", "32", "--batch-size", "32",
             "--epochs", "1", "--progress", "off", "--optimizer", "sgd"]
    for data, noise, measured in (("synthetic", "0.25", True), ("synthetic", "0", False), ("digits", "0.25", False)):
        out = str(tmp_path / f"{data}{noise}")
        zosam_train([*small, "--data", data, "--label-noise", noise, "--out", out])
        row = metrics(out)[0]
        assert ("fit_clean" in row) == measured and ("fit_noisy" in row) == measured, (data, noise)
        assert "val_acc" not in row
        if measured:
            assert 0 <= row["fit_clean"] <= 100 and 0 <= row["fit_noisy"] <= 100


def test_command_line_errors(tmp_path, capsys):
    def error(*argv):
        with pytest.raises((SystemExit, ValueError)) as e:
            run(tmp_path, *argv, out="err")
        return str(e.value) + capsys.readouterr().err
    assert "choose mlp1d, cnn1d" in error()                                  # the default resnet32
    assert "--val-size must be >= 1" in error("--model", "mlp1d", "--val-size", "0")
    assert "--val-size: --data synthetic has no validation split" in error(
        "--model", "resnet20", "--data", "synthetic")
    assert "--corrupt: the mnist1d data are not images" in error("--model", "mlp1d", "--corrupt", "all")
    assert "--cifar10c: CIFAR-10-C holds images" in error("--model", "mlp1d", "--cifar10c", str(tmp_path))
    assert "reads no folder" in error("--model", "mlp1d", "--data-dir", str(tmp_path))
    assert "mlp1d, cnn1d (1-D)" in error("--model", "mlp2d")
