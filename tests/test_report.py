"""zosam-report: grouping by configuration, the 95 % interval against its
closed form, unfinished runs left out, and real zosam-train runs read."""
import json
import math
import statistics

import pytest

from zosam_kernels.train.cli import train as zosam_train
from zosam_kernels.train.report import main

T975 = {1: 12.706204736174698, 2: 4.302652729911275}   # Student's t, 0.975 quantile, by degrees of freedom


def fake_run(root, name, seed, optimizer, acc, epochs_to=None, complete=True, gradvar=None):
    d = root / name
    d.mkdir()
    args = {"optimizer": optimizer, "sparse": "rigl", "density": 0.1, "seed": seed, "out": str(d),
            "data_dir": f"/data{seed}", "lr": 0.1}
    (d / "config.json").write_text(json.dumps({"args": args}))
    summary = {"complete": complete, "final_test_acc": acc, "epochs_to": {"90": epochs_to},
               "diagnostics": {"gradvar": {"variance": gradvar}} if gradvar is not None else None}
    (d / "summary.json").write_text(json.dumps(summary))
    return str(d)


def test_groups_by_configuration_with_t_intervals(tmp_path, capsys):
    sgd = [90.0, 91.5, 93.0]
    zo = [92.0, 92.5, 94.0]
    dirs = [fake_run(tmp_path, f"sgd{s}", s, "sgd", a, epochs_to=10 + s, gradvar=0.3 * (s + 1))
            for s, a in enumerate(sgd)]
    dirs += [fake_run(tmp_path, f"zo{s}", s, "zosam", a, epochs_to=None if s == 0 else 8)
             for s, a in enumerate(zo)]
    dirs.append(fake_run(tmp_path, "cut", 9, "zosam", 50.0, complete=False))
    main([*dirs, "--plot", str(tmp_path / "acc.png")])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "| optimizer | seeds | test acc % | grad variance | epochs to 90 % |"
    half = T975[2] * statistics.stdev(sgd) / math.sqrt(3)
    assert lines[2] == (f"| sgd | 3 | {statistics.mean(sgd):.2f} ± {half:.2f} | 0.6000 ± "
                        f"{T975[2] * 0.3 / math.sqrt(3):.4f} | 11.0 ± {T975[2] / math.sqrt(3):.1f} |")
    half = T975[2] * statistics.stdev(zo) / math.sqrt(3)
    assert lines[3] == f"| zosam | 3 | {statistics.mean(zo):.2f} ± {half:.2f} | - | 8.0 ± 0.0 (1 never) |"
    assert "1 unfinished runs left out" in err
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_seed_run_twice_counts_once_and_is_named(tmp_path, capsys):
    dirs = [fake_run(tmp_path, "a", 0, "sgd", 90.0), fake_run(tmp_path, "b", 0, "sgd", 91.0),
            fake_run(tmp_path, "c", 1, "sgd", 93.0)]
    main(dirs)
    out, err = capsys.readouterr()
    per_seed = [90.5, 93.0]   # seed 0: the mean of its two runs
    half = 12.706204736174698 * statistics.stdev(per_seed) / math.sqrt(2)   # t, 1 degree of freedom
    assert out.splitlines()[2] == f"| sgd | 2 (3 runs) | {statistics.mean(per_seed):.2f} ± {half:.2f} | - (2 never) |"
    assert f"{dirs[0]}, {dirs[1]} repeat one configuration with seed 0" in err
    main(dirs[:2])   # one seed, run twice: no interval
    assert capsys.readouterr().out.splitlines()[2] == "| sgd | 1 (2 runs) | 90.50 | - (1 never) |"


def test_reads_real_runs(tmp_path, capsys):
    small = ["--model", "resnet20", "--train-size", "32", "--test-size", "32", "--batch-size", "32",
             "--epochs", "1", "--progress", "off", "--optimizer", "sgd"]
    summaries = [zosam_train([*small, "--seed", str(s), "--out", str(tmp_path / f"r{s}")]) for s in (0, 1)]
    capsys.readouterr()
    main([str(tmp_path / "r0"), str(tmp_path / "r1")])
    row = capsys.readouterr().out.splitlines()[2]
    accs = [s["final_test_acc"] for s in summaries]
    assert row.startswith(f"| synthetic | resnet20 | sgd | 2 | {statistics.mean(accs):.2f}")


def test_errors(tmp_path):
    with pytest.raises(SystemExit, match="not a zosam-train run"):
        main([str(tmp_path)])
    d = fake_run(tmp_path, "cut", 0, "sgd", 1.0, complete=False)
    with pytest.raises(SystemExit, match="none of the 1 runs has finished"):
        main([d])


def test_validation_selection_and_fit_columns(tmp_path, capsys):
    """Runs with a validation split and label noise get their columns; the others leave them out."""
    dirs = []
    for s, (at_best, epoch, clean, noisy) in enumerate([(60.0, 10, 99.0, 20.0), (62.0, 14, 97.0, 30.0)]):
        d = fake_run(tmp_path, f"m{s}", s, "sam", 58.0 + s)
        summary = json.loads(open(f"{d}/summary.json").read())
        summary.update(test_acc_at_best_val=at_best, best_val_epoch=epoch, final_fit_clean=clean,
                       final_fit_noisy=noisy)
        open(f"{d}/summary.json", "w").write(json.dumps(summary))
        dirs.append(d)
    main(dirs)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| optimizer | seeds | test acc % | test acc at best val % | best val epoch | clean fit % "
                        "| noisy fit % | epochs to 90 % |")
    half = T975[1] * statistics.stdev([60.0, 62.0]) / math.sqrt(2)
    epochs = T975[1] * statistics.stdev([10, 14]) / math.sqrt(2)
    assert lines[2].startswith(f"| sam | 2 | 58.50 ± {T975[1] * statistics.stdev([58.0, 59.0]) / math.sqrt(2):.2f} "
                               f"| 61.00 ± {half:.2f} | 12.0 ± {epochs:.1f} | 98.00 ± ")
    assert f"| 25.00 ± {T975[1] * statistics.stdev([20.0, 30.0]) / math.sqrt(2):.2f} |" in lines[2]


def test_ascent_columns_for_the_family_and_a_dash_for_sgd(tmp_path, capsys):
    """The ascent probe's last cosine and loss rise, per configuration; SGD has none."""
    dirs = [fake_run(tmp_path, "sgd", 0, "sgd", 50.0)]
    for s, (cosine, rise) in enumerate([(0.91, 0.012), (0.95, 0.018)]):
        d = fake_run(tmp_path, f"sam{s}", s, "sam", 60.0)
        summary = json.loads(open(f"{d}/summary.json").read())
        summary["diagnostics"] = {"ascent": {"cosine": cosine, "loss_rise": rise, "steps": 8}}
        open(f"{d}/summary.json", "w").write(json.dumps(summary))
        dirs.append(d)
    main(dirs)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| optimizer | seeds | test acc % | cos(ε, ∇L) | loss rise | epochs to 90 % |"
    assert lines[2] == "| sgd | 1 | 50.00 | - | - | - (1 never) |"
    cos_half = T975[1] * statistics.stdev([0.91, 0.95]) / math.sqrt(2)
    rise_half = T975[1] * statistics.stdev([0.012, 0.018]) / math.sqrt(2)
    assert lines[3] == (f"| sam | 2 | 60.00 ± 0.00 | 0.9300 ± {cos_half:.4f} | 0.0150 ± {rise_half:.4f} "
                        "| - (2 never) |")


def test_one_run_names_its_data_and_model_and_whole_epochs(tmp_path, capsys):
    d = fake_run(tmp_path, "one", 0, "sam", 61.25, epochs_to=7)
    config = json.loads(open(f"{d}/config.json").read())
    config["args"].update(data="mnist1d", model="cnn1d")
    open(f"{d}/config.json", "w").write(json.dumps(config))
    summary = json.loads(open(f"{d}/summary.json").read())
    summary.update(test_acc_at_best_val=60.0, best_val_epoch=2)
    open(f"{d}/summary.json", "w").write(json.dumps(summary))
    main([d])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| data | model | optimizer | seeds | test acc % | test acc at best val % | best val epoch "
                        "| epochs to 90 % |")
    assert lines[2] == "| mnist1d | cnn1d | sam | 1 | 61.25 | 60.00 | 2 | 7 |"
