"""zosam-train end to end on tiny datasets written in the official formats
(tests/train_files.py): every data path, sparse method and optimizer for a
short epoch, bit-exact resume, the outputs' schema checked against
independent recomputations, and the errors a user meets first."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train_files import write_cifar10, write_cifar10c, write_imagefolder
from zosam_kernels.models import MODELS
from zosam_kernels.optim import FAMILY
from zosam_kernels.train.build import SPARSE_METHODS
from zosam_kernels.train.cli import train as zosam_train

CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616])
TIMING = {"epoch_s", "eval_s", "images_per_s"}
# small and fast: 64 synthetic training images in 2 steps of 32, ResNet-20
SMALL = ["--model", "resnet20", "--train-size", "64", "--test-size", "32", "--batch-size", "32",
         "--epochs", "1", "--progress", "off"]


def train(tmp_path, *argv, out="run"):
    out = str(tmp_path / out)
    summary = zosam_train([*SMALL, "--out", out, *map(str, argv)])
    return out, summary


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"), n_per_batch=16, n_test=32)


# ---- every method and optimizer runs, and the masks stay in force ------------------

@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_every_sparse_method(tmp_path, method):
    extra = ["--update-interval", "1"] if method in ("set", "dsr", "rigl", "mest") else []
    out, summary = train(tmp_path, "--sparse", method, "--density", "1" if method == "dense" else "0.2",
                         "--optimizer", "zosam", *extra)
    rows = metrics(out)
    assert len(rows) == (2 if method == "lth" else 1)        # lth: one pruning round, then the ticket
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    if method == "dense":
        assert rows[-1]["density"] == 1.0 and "sparsity" not in ckpt or not ckpt["sparsity"]
        return
    masks = ckpt["sparsity"]["masking"]["masks"]
    weights = {n: w for n, w in ckpt["model"].items() if n in masks}
    assert set(masks) == {n for n, w in ckpt["model"].items() if w.dim() > 1}   # conv and linear weights
    assert all(torch.all(weights[n][~m] == 0) for n, m in masks.items())        # pruned weights are 0
    density = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert rows[-1]["density"] == pytest.approx(density) == pytest.approx(0.2, abs=2e-3)
    if method not in ("set", "dsr", "rigl", "mest"):      # these grow weights at 0
        nonzero = sum(int((w != 0).sum()) for w in weights.values())
        assert nonzero == sum(int(m.sum()) for m in masks.values())
    assert math.isfinite(rows[-1]["train_loss"]) and summary["complete"]


@pytest.mark.parametrize("optimizer", FAMILY)
def test_every_optimizer(tmp_path, optimizer):
    out, summary = train(tmp_path, "--optimizer", optimizer, "--sparse", "rigl", "--density", "0.3",
                         "--update-interval", "1")
    row = metrics(out)[0]
    assert math.isfinite(row["train_loss"]) and 0 <= row["test_acc"] <= 100
    assert row["density"] == pytest.approx(0.3, abs=2e-3)


# ---- data paths -------------------------------------------------------------------

def test_cifar10_and_cifar10c_against_an_independent_evaluation(tmp_path, cifar):
    c10c = write_cifar10c(tmp_path / "c10c")
    out, summary = train(tmp_path, "--data", "cifar10", "--data-dir", cifar, "--cifar10c", c10c,
                         "--optimizer", "sgd")
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    model = MODELS["resnet20"]()
    model.load_state_dict(ckpt["model"])
    model.eval()
    labels = np.load(os.path.join(c10c, "labels.npy"))
    n = len(labels) // 5
    corruptions = sorted(f[:-4] for f in os.listdir(c10c) if f.endswith(".npy") and f != "labels.npy")
    assert sorted(summary["cifar10c"]["accuracy"]) == corruptions
    accs = []
    for c in corruptions:
        images = np.load(os.path.join(c10c, c + ".npy"))             # (5N, 32, 32, 3) uint8, HWC
        x = (images / 255.0 - CIFAR10_MEAN) / CIFAR10_STD
        x = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32)
        with torch.no_grad():
            pred = model(x).argmax(1).numpy()
        for severity in range(1, 6):
            block = slice((severity - 1) * n, severity * n)
            acc = 100 * float((pred[block] == labels[block]).mean())
            assert summary["cifar10c"]["accuracy"][c][str(severity)] == pytest.approx(acc, abs=1e-9)
            accs.append(acc)
    assert summary["cifar10c"]["mean"] == pytest.approx(sum(accs) / len(accs))


def test_imagefolder_and_digits(tmp_path):
    tree = write_imagefolder(tmp_path / "tree", per_class=4)
    out, _ = train(tmp_path, "--data", "imagefolder", "--data-dir", tree, "--image-size", "32",
                   "--train-size", "8", "--test-size", "8", "--batch-size", "4", "--optimizer", "zosam",
                   out="folder")
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["data"]["image_shape"] == [3, 32, 32]
    pytest.importorskip("sklearn")
    out, _ = train(tmp_path, "--data", "digits", "--label-noise", "0.2", "--optimizer", "sam", out="digits")
    assert json.load(open(os.path.join(out, "config.json")))["data"]["num_classes"] == 10


def test_timm_model(tmp_path):
    pytest.importorskip("timm")
    out, _ = train(tmp_path, "--model", "timm:vit_tiny_patch16_224",
                   "--model-kwargs", '{"img_size": 32, "patch_size": 8, "depth": 2}',
                   "--sparse", "snip", "--density", "0.5", "--optimizer", "zosam")
    assert metrics(out)[0]["density"] == pytest.approx(0.5, abs=2e-3)


# ---- outputs --------------------------------------------------------------------------

def test_outputs_schema_and_values(tmp_path):
    out, summary = train(tmp_path, "--epochs", "3", "--lr", "0.05", "--warmup-epochs", "1",
                         "--targets", "0,101", "--optimizer", "zosam", "--sparse", "set", "--density", "0.5")
    config = json.load(open(os.path.join(out, "config.json")))
    assert {"args", "versions", "device", "data", "steps_per_epoch", "command"} <= set(config)
    assert config["args"]["optimizer"] == "zosam" and config["versions"]["torch"] == torch.__version__
    rows = metrics(out)
    need = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "density", "epoch_s",
            "images_per_s"}
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(need <= set(r) for r in rows)
    # the LR after each epoch (2 steps): warm-up over steps 0-1, then a cosine over steps 2-6
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.05 * 0.5 * (1 + math.cos(math.pi / 2)), 0.0],
                                                      abs=1e-12)
    # test loss and accuracy recomputed from the checkpoint's weights on the same 32 test images
    from zosam_kernels.train.datasets import load
    data = load("synthetic", test_size=32)
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    model = MODELS["resnet20"]()
    model.load_state_dict(ckpt["model"])
    model.eval()
    x = torch.stack([data.test[i][0] for i in range(32)])
    y = torch.tensor([data.test[i][1] for i in range(32)])
    with torch.no_grad():
        logits = model(x)
    assert rows[-1]["test_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert rows[-1]["test_acc"] == pytest.approx(100 * float((logits.argmax(1) == y).float().mean()))
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    assert summary["best_test_acc"] == max(r["test_acc"] for r in rows)
    assert summary["epochs_to"] == {"0": 1, "101": None}
    assert summary["total_s"] == pytest.approx(sum(r["epoch_s"] + r["eval_s"] for r in rows))
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ---- resume ---------------------------------------------------------------------------

RESUME_CASES = {
    # augmentation, dynamic topology (updates on both sides of the cut), 2 directions
    "cifar-rigl-zosam": ["--data", "cifar10", "--sparse", "rigl", "--update-interval", "1",
                         "--optimizer", "zosam", "--n-dirs", "2", "--epochs", "3"],
    # a pruning round ends at the cut: prune, rewind, new LR schedule; SSAM's dynamic mask
    "lth-ssam": ["--sparse", "lth", "--density", "0.5", "--optimizer", "ssam-d", "--epochs", "2"],
    # DSR's threshold and ESAM's random selections
    "dsr-esam": ["--sparse", "dsr", "--update-interval", "1", "--optimizer", "esam", "--epochs", "3"],
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_is_bit_exact(tmp_path, cifar, case):
    argv = RESUME_CASES[case] + (["--data-dir", cifar] if "cifar10" in RESUME_CASES[case] else [])
    whole, summary = train(tmp_path, *argv, out="whole")
    cut, _ = train(tmp_path, *argv, "--stop-after", "1", out="cut")
    assert len(metrics(cut)) == 1
    with open(os.path.join(cut, "metrics.jsonl"), "a") as f:
        f.write('{"epoch": 2, "from": "a crash after the checkpoint of epoch 1"}\n')
    train(tmp_path, *argv, "--stop-after", "2", "--resume", out="cut")
    resumed = zosam_train([*SMALL, "--out", cut, *map(str, argv), "--resume"])
    assert without_timing(metrics(cut)) == without_timing(metrics(whole))
    a = torch.load(os.path.join(whole, "checkpoint.pt"), weights_only=False)
    b = torch.load(os.path.join(cut, "checkpoint.pt"), weights_only=False)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert resumed["final_test_acc"] == summary["final_test_acc"]


def test_save_every_resumes_from_the_last_checkpoint(tmp_path, monkeypatch):
    """--save-every 2: a crash after epoch 3 leaves epoch 2's checkpoint; the resume replays
    epoch 3 and ends where the uninterrupted run ends."""
    argv = ["--optimizer", "zosam", "--epochs", "4", "--save-every", "2"]
    whole, summary = train(tmp_path, *argv, out="whole")
    from zosam_kernels.train import outputs
    printed = outputs.print_epoch

    def crash_after_epoch_3(row, total):
        printed(row, total)
        if row["epoch"] == 3:
            raise KeyboardInterrupt("a crash after epoch 3")
    monkeypatch.setattr(outputs, "print_epoch", crash_after_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, *argv, out="cut")
    cut = str(tmp_path / "cut")
    assert len(metrics(cut)) == 3
    assert len(torch.load(os.path.join(cut, "checkpoint.pt"), weights_only=False)["history"]) == 2
    monkeypatch.setattr(outputs, "print_epoch", printed)
    resumed = zosam_train([*SMALL, "--out", cut, *argv, "--resume"])
    assert without_timing(metrics(cut)) == without_timing(metrics(whole))
    assert resumed["final_test_acc"] == summary["final_test_acc"]


# ---- errors ----------------------------------------------------------------------------

def error_of(tmp_path, capsys, *argv):
    with pytest.raises(SystemExit) as e:
        zosam_train([*SMALL, "--out", str(tmp_path / "err"), *argv])
    return str(e.value.code) + capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--density", "1.5", "--sparse", "rigl"], "--density must be in (0, 1)"),
    (["--density", "0.5"], "--density 0.5 with --sparse dense"),
    (["--sparse", "magnitude"], "argument --sparse: invalid choice"),
    (["--optimizer", "adam"], "argument --optimizer: invalid choice"),
    (["--optimizer", "sam", "--cosine", "0.5"], "--cosine: not an option of --optimizer sam"),
    (["--optimizer", "oracle", "--cosine", "1.5"], "--optimizer oracle: --cosine must be"),
    (["--optimizer", "zosam-guided", "--prior", "adam"], "argument --prior: invalid choice"),
    (["--model", "resnet7"], "choose from"),
    (["--data", "cifar10"], "--data-dir"),
    (["--label-noise", "1"], "--label-noise must be in [0, 1)"),
])
def test_argument_errors(tmp_path, capsys, argv, message):
    assert message in error_of(tmp_path, capsys, *argv)


def test_errors_that_name_what_to_do(tmp_path, capsys, monkeypatch):
    message = error_of(tmp_path, capsys, "--optimizer", "sam", "--delta", "0.01")
    assert ("--delta: not an option of --optimizer sam; it takes --adaptive, --max-grad-norm, --perturb, --rho ("
            in message)
    for python_only in ("grad_scaler", "masks", "process_group", "check_finite"):   # keywords, not flags
        assert python_only not in message
    assert "cifar-10-python.tar.gz" in error_of(tmp_path, capsys, "--data", "cifar10",
                                                "--data-dir", str(tmp_path / "nowhere"))
    monkeypatch.setitem(sys.modules, "timm", None)     # import timm now fails, as when it is absent
    assert "pip install timm" in error_of(tmp_path, capsys, "--model", "timm:resnet18")
    monkeypatch.undo()
    if "timm" in sys.modules or pytest.importorskip("timm"):
        assert "timm has no model 'resnet7'" in error_of(tmp_path, capsys, "--model", "timm:resnet7")
    assert "no checkpoint" in error_of(tmp_path, capsys, "--resume")
    train(tmp_path, "--optimizer", "sgd", out="e")
    with pytest.raises(SystemExit) as e:
        zosam_train([*SMALL, "--out", str(tmp_path / "e"), "--optimizer", "sgd"])
    assert "add --resume" in str(e.value.code) + capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"--lr 0.1 -> 0.2"):
        zosam_train([*SMALL, "--out", str(tmp_path / "e"), "--optimizer", "sgd", "--resume", "--lr", "0.2"])


OPTIMIZER_ERRORS = [
    (["--rho", "-1"], "--optimizer zosam: --rho must be a finite non-negative number, got -1.0"),
    (["--n-dirs", "0"], "--optimizer zosam: --n-dirs must be an int >= 1, got 0"),
    (["--delta", "0"], "--optimizer zosam: --delta must be a finite positive number, got 0.0"),
    (["--optimizer", "sam", "--max-grad-norm", "0"], "--max-grad-norm must be a finite positive number"),
]
DATA_ERRORS = [
    (["--data", "cifar10", "--data-dir", "nowhere"], "--data-dir nowhere is not a directory"),
    (["--train-size", "16"], "--batch-size 32 is larger than the training set (16 images)"),
    (["--sparse", "magnitude"], "argument --sparse: invalid choice"),
]


@pytest.mark.parametrize("argv, message", OPTIMIZER_ERRORS + DATA_ERRORS)
def test_bad_input_is_one_line_before_any_data_and_leaves_nothing(tmp_path, capsys, monkeypatch, argv, message):
    import zosam_kernels.train.loop as loop
    out = tmp_path / "refused"
    if (argv, message) in OPTIMIZER_ERRORS:   # refused before any data is read
        monkeypatch.setattr(loop, "load", lambda *a, **k: pytest.fail("the data were read"))
    with pytest.raises(SystemExit) as e:
        zosam_train([*SMALL, "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("zosam-train: error: ") and message in err, err
    assert not out.exists()


def test_divergence_stops_before_a_checkpoint_and_says_so_in_the_summary(tmp_path):
    with pytest.raises(RuntimeError, match="epoch 1: the weights or buffers are no longer finite"):
        train(tmp_path, "--optimizer", "sgd", "--lr", "1e30", "--epochs", "2")
    run = tmp_path / "run"
    assert not os.path.exists(run / "checkpoint.pt")
    assert metrics(str(run)) == []
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is False and summary["diverged_at"] == 1 and summary["final_test_acc"] is None
    # zosam-report leaves it out, and says why
    from zosam_kernels.train.report import main as report
    with pytest.raises(SystemExit, match=re.escape(f"has finished: {run} (diverged at epoch 1)")):
        report([str(run)])


def test_a_run_that_diverges_later_keeps_the_epochs_before_in_its_summary(tmp_path, monkeypatch):
    from zosam_kernels.train import loop
    real, calls = loop.Run._check_finite, []

    def diverge_at_2(self, epoch):
        calls.append(epoch)
        if epoch == 2:
            raise loop.Diverged("epoch 2: the weights or buffers are no longer finite (faked)")
        real(self, epoch)
    monkeypatch.setattr(loop.Run, "_check_finite", diverge_at_2)
    with pytest.raises(loop.Diverged):
        train(tmp_path, "--optimizer", "sgd", "--epochs", "3")
    rows = metrics(str(tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert calls == [1, 2] and [r["epoch"] for r in rows] == [1]
    assert summary["diverged_at"] == 2 and summary["complete"] is False and summary["epochs_done"] == 1
    assert summary["final_test_acc"] == rows[0]["test_acc"]


def test_the_finiteness_check_covers_buffers(tmp_path):
    """A BatchNorm statistic gone non-finite (weights still finite) is divergence too."""
    from types import SimpleNamespace

    from zosam_kernels.train.loop import Run
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    run = SimpleNamespace(model=model, args=SimpleNamespace(out=str(tmp_path)))
    Run._check_finite(run, 2)                         # all finite: nothing to say
    model[1].running_var[1] = float("nan")
    with pytest.raises(RuntimeError, match="epoch 2: the weights or buffers are no longer finite"):
        Run._check_finite(run, 2)


def test_console_script_and_module(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "zosam-train")
    for cmd in ([exe, "--help"], [sys.executable, "-m", "zosam_kernels.train", "--help"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "--zo-batch-fraction" in done.stdout and "metrics.jsonl" in done.stdout
    # a whole run exits with status 0 and prints its summary line
    done = subprocess.run([exe, *SMALL, "--optimizer", "sgd", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["final_test_acc"] is not None


# ---- diagnostics and corruptions --------------------------------------------------------

def test_diagnostics_and_corruptions_leave_the_trajectory_alone(tmp_path):
    from zosam_kernels.diagnostics import CorruptedDataset
    from zosam_kernels.train.datasets import load
    pytest.importorskip("sklearn")
    argv = ["--data", "digits", "--optimizer", "zosam", "--sparse", "rigl", "--density", "0.3", "--epochs", "2"]
    plain, _ = train(tmp_path, *argv, out="plain")
    probed, summary = train(tmp_path, *argv, "--diagnostics", "gradvar,hessian,landscape,ascent",
                            "--diagnostics-epochs", "1,last", "--diagnostics-batches", "2", "--hessian-iters", "3",
                            "--hessian-samples", "2", "--landscape-points", "3",
                            "--corrupt", "gaussian_noise,contrast", out="probed")
    rows = metrics(probed)
    assert without_timing([{k: v for k, v in r.items() if k != "diagnostics"} for r in rows]) == \
        without_timing(metrics(plain))
    for row in rows:
        d = row["diagnostics"]
        assert d["gradvar"]["batches"] == 2 and d["gradvar"]["variance"] > 0
        assert d["hessian"]["top_eigenvalue"] != 0 and d["hessian"]["trace"] is not None
        assert d["ascent"]["steps"] == 2 and -1 <= d["ascent"]["cosine"] <= 1
        assert math.isfinite(d["ascent"]["loss_rise"]) and d["ascent"]["grad_norm"] > 0
        for prior in ("alpha_momentum", "alpha_gradient"):   # the first step has no prior: 1 of 2 counts
            assert -1 <= d["ascent"][prior] <= 1
        assert d["landscape"] == {"1d": f"landscape_e{row['epoch']}_1d.png",
                                  "2d": f"landscape_e{row['epoch']}_2d.png"}
        grid = json.load(open(os.path.join(probed, f"landscape_e{row['epoch']}_2d.json")))
        assert len(grid["losses"]) == len(grid["alphas"])
    assert summary["diagnostics"]["gradvar"]["epoch"] == 2
    # the corrupted accuracies, recomputed from the checkpoint's weights
    ckpt = torch.load(os.path.join(probed, "checkpoint.pt"), weights_only=False)
    model = MODELS["resnet20"]()
    model.load_state_dict(ckpt["model"])
    model.eval()
    data = load("digits", test_size=32)
    accs = []
    for name in ("gaussian_noise", "contrast"):
        for severity in range(1, 6):
            dataset = CorruptedDataset(data.test, data.mean, data.std, name, severity, seed=0)
            x = torch.stack([dataset[i][0] for i in range(32)])
            y = torch.tensor([dataset[i][1] for i in range(32)])
            with torch.no_grad():
                acc = 100 * float((model(x).argmax(1) == y).float().mean())
            assert summary["corrupt"]["accuracy"][name][str(severity)] == pytest.approx(acc)
            accs.append(acc)
    assert summary["corrupt"]["mean"] == pytest.approx(sum(accs) / len(accs))


def test_diagnostics_errors(tmp_path, capsys):
    assert "SGD has no perturbation" in error_of(tmp_path, capsys, "--optimizer", "sgd", "--diagnostics", "ascent")
    assert "choose from gradvar" in error_of(tmp_path, capsys, "--diagnostics", "sharpness")
    assert "or all" in error_of(tmp_path, capsys, "--corrupt", "fog")
    assert "not images in [0, 1]" in error_of(tmp_path, capsys, "--corrupt", "all")


def test_help_shows_no_default_for_a_required_option(capsys):
    with pytest.raises(SystemExit):
        zosam_train(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--out RUN_DIR directory of the run's outputs --resume" in text
    assert "(default: None)" not in text.split("--out RUN_DIR")[1].split("--resume")[0]


def test_the_summary_keeps_the_best_epoch_before_the_last(tmp_path):
    """A written history whose best test accuracy is not its last."""
    from zosam_kernels.train.outputs import write_summary
    accs = [40.0, 71.5, 65.0, 62.5]
    history = [{"epoch": i + 1, "round": 0, "round_epoch": i + 1, "test_acc": a, "density": 1.0}
               for i, a in enumerate(accs)]
    summary = write_summary(str(tmp_path), history, 1.0, [70.0], True, {}, 1)
    assert (summary["best_test_acc"], summary["best_epoch"]) == (71.5, 2)
    assert summary["final_test_acc"] == 62.5
    assert summary["epochs_to"] == {"70": 2}


def test_every_optimizer_flag_reaches_the_optimizer():
    """Each optimizer flag of zosam-train, set on the command line, is what the optimizer is built with
    (zosam_kernels/train/build.py, OPTIMIZER_OPTIONS), for a member that takes it."""
    from zosam_kernels.recipes import options_of
    from zosam_kernels.train.build import OPTIMIZER_OPTIONS, optimizer_arguments
    from zosam_kernels.train.cli import parse_args, parser
    actions = {a.dest: a for a in parser()._actions}
    member_options = {o for m in FAMILY if m != "sgd" for o in FAMILY[m].defaults} | {"max_grad_norm"}
    # --seed seeds everything (given to every member that takes a seed); --update-interval is the sparse
    # topology's (SSAM's mask interval keeps its paper's value)
    named = {dest for dest in actions if dest in member_options or dest.endswith("_" + "sparsity")
             or dest == "noise_batch"} - {"seed", "update_interval"}
    assert named <= set(OPTIMIZER_OPTIONS), f"map {sorted(named - set(OPTIMIZER_OPTIONS))} in OPTIMIZER_OPTIONS"
    for dest, kw in OPTIMIZER_OPTIONS.items():
        action = actions[dest]
        flag = action.option_strings[0]
        if action.nargs == 0:
            argv, value = [flag], True
        elif action.choices:
            value = list(action.choices)[-1]
            argv = [flag, str(value)]
        else:
            value = {int: 3, float: 0.25}.get(action.type, "last:1")
            argv = [flag, str(value)]
        member = next(m for m in FAMILY if kw in options_of(m))
        args = parse_args(["--optimizer", member, "--out", "unused", *argv])
        _, options = optimizer_arguments(args)
        assert options[kw] == value, (dest, member)
