"""What a zosam-train run writes into its directory, and what it prints:
metrics.jsonl (one JSON object per epoch), summary.json, curves.png, a
progress bar per epoch and one line per epoch.
"""
import json
import math
import os


def _finite(value):
    """JSON has no NaN or infinity: a diverged loss is written as null (nested values too)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _json_line(row):
    return json.dumps(_finite(row))


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(_finite(obj), f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def rewrite_metrics(out, history):
    """metrics.jsonl as the checkpoint knows it (drops epochs that were never checkpointed)."""
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.writelines(_json_line(row) + "\n" for row in history)


def append_metrics(out, row):
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(_json_line(row) + "\n")


def progress(description, mode):
    """Wraps the epoch's loader in a tqdm bar; mode "auto" shows it on a terminal only."""
    from tqdm import tqdm
    disable = {"auto": None, "on": False, "off": True}[mode]
    return lambda iterable: tqdm(iterable, desc=description, leave=False, disable=disable,
                                 dynamic_ncols=True)


def print_epoch(row, total_epochs):
    val = f"val acc {row['val_acc']:5.2f}  " if "val_acc" in row else ""
    fit = "".join(f"{name} fit {row[key]:5.1f}  " for name, key in (("clean", "fit_clean"), ("noisy", "fit_noisy"))
                  if row.get(key) is not None)
    print(f"epoch {row['epoch']:3d}/{total_epochs}  lr {row['lr']:.4f}  "
          f"train loss {row['train_loss']:.4f} acc {row['train_acc']:5.2f}  {fit}{val}"
          f"test loss {row['test_loss']:.4f} acc {row['test_acc']:5.2f}  "
          f"density {row['density']:.4f}  {row['epoch_s']:.1f} s ({row['images_per_s']:.0f} img/s)",
          flush=True)


def write_summary(out, history, total_s, targets, complete, robustness, rounds, diverged_at=None):
    """summary.json: accuracies of the last round (for LTH, the ticket at the final
    density; earlier rounds are denser), epochs to each target accuracy within it,
    the robustness results (cifar10c, corrupt) and the last measurement of every
    diagnostic (with the epoch it was made at). diverged_at: the epoch whose weights
    were no longer finite, for a run that stopped there (its accuracies are those of the
    epochs before).

    With a validation split, the model selection a user without test labels
    makes: the first epoch of the highest validation accuracy, and the test
    accuracy there. The validation labels are as noisy as the training ones;
    under symmetric noise of a fraction η < (K - 1)/K of K classes the
    accuracy on them, (1 - η)·a + η·(1 - a)/(K - 1), rises with the clean
    accuracy a, so it ranks the epochs as clean labels would."""
    diagnostics = {}
    for row in history:
        for name, value in (row.get("diagnostics") or {}).items():
            diagnostics[name] = {**value, "epoch": row["epoch"]}
    last = [r for r in history if r["round"] == rounds - 1]
    accs = [r["test_acc"] for r in last]
    val = [r["val_acc"] for r in last if "val_acc" in r]
    chosen = last[val.index(max(val))] if val else None
    summary = {
        "complete": complete,
        "epochs_done": len(history),
        "diverged_at": diverged_at,
        "final_test_acc": accs[-1] if accs else None,
        "best_test_acc": max(accs) if accs else None,
        "best_epoch": last[accs.index(max(accs))]["round_epoch"] if accs else None,
        "best_val_acc": chosen["val_acc"] if chosen else None,
        "best_val_epoch": chosen["round_epoch"] if chosen else None,
        "test_acc_at_best_val": chosen["test_acc"] if chosen else None,
        "final_fit_clean": last[-1].get("fit_clean") if last else None,
        "final_fit_noisy": last[-1].get("fit_noisy") if last else None,
        "epochs_to": {f"{t:g}": next((r["round_epoch"] for r in last if r["test_acc"] >= t), None)
                      for t in targets},
        "final_density": history[-1]["density"] if history else None,
        "total_s": total_s,
        **robustness,
        "diagnostics": diagnostics or None,
    }
    write_json(os.path.join(out, "summary.json"), summary)
    return summary


def curves(out, history, args):
    """curves.png: loss and accuracy, train and test, per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((ax_loss, "loss", "cross-entropy"), (ax_acc, "acc", "accuracy (%)")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], label="train (gradient pass)")
        if history and f"val_{key}" in history[0]:
            ax.plot(epochs, [r[f"val_{key}"] for r in history], label="validation (noisy labels)")
        ax.plot(epochs, [r[f"test_{key}"] for r in history], label="test")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_yscale("log")     # the first epochs' test loss would flatten the rest
    density = f"density {history[-1]['density']:.3g}" if history else ""
    fig.suptitle(f"{args.model} on {args.data}: {args.optimizer}, {args.sparse} {density}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)
    plt.close(fig)
