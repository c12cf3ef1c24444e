"""zosam-bench's outputs: the table on stdout, JSON, CSV rows, a bar chart."""
import csv
import json
import os
import sys

COLUMNS = ("method", "step_ms", "images_per_s", "vs_sam", "vs_sgd", "fwd_passes", "bwd_passes",
           "fwd_batch_equiv", "bwd_batch_equiv", "extra_vs_sam", "peak_mem_bytes", "optimizer_bytes",
           "param_buffers")


def progress(done, total, label, stream=sys.stderr):
    width = 30
    filled = width * done // total
    end = "\n" if done == total else ""
    print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end,
          file=stream, flush=True)


def _mb(v):
    return f"{v / 2**20:9.1f}" if v is not None else f"{'-':>9}"


def _ratio(v):
    return f"{v:7.2f}" if v is not None else f"{'-':>7}"


def table(header, results, phases=None):
    lines = [header,
             f"{'method':<17}{'step ms':>9}{'img/s':>8}{'× SAM':>7}{'× SGD':>7}{'fwd':>5}{'fwd·B':>7}"
             f"{'bwd':>5}{'bwd·B':>7}{'extra':>7}{'peak MB':>9}{'opt MB':>9}{'buffers':>8}"]
    for r in results:
        lines.append(f"{r['method']:<17}{r['step_ms']:9.1f}{r['images_per_s']:8.1f}{_ratio(r['vs_sam'])}"
                     f"{_ratio(r['vs_sgd'])}{r['fwd_passes']:5.1f}{r['fwd_batch_equiv']:7.2f}"
                     f"{r['bwd_passes']:5.1f}{r['bwd_batch_equiv']:7.2f}{_ratio(r['extra_vs_sam'])}"
                     f"{_mb(r['peak_mem_bytes'])}{_mb(r['optimizer_bytes'])}"
                     f"{r['param_buffers']:8.2f}")
    lines.append("fwd·B, bwd·B: passes weighted by the share of the batch they saw; extra: the step's time "
                 "beyond SGD's, in units of SAM's (a partial backward's share shows here); opt MB: what the "
                 "optimizer keeps between steps; buffers: that in parameter-sized units")
    if phases:
        lines.append("")
        lines.append("phase times per step, ms (CPU time; device time on CUDA)")
        for method, per_phase in phases.items():
            parts = [f"{name} {v['cpu_ms']:.1f}" + (f"/{v['device_ms']:.1f}" if v["device_ms"] else "")
                     for name, v in per_phase.items()]
            lines.append(f"  {method:<17}" + ", ".join(parts))
    return "\n".join(lines)


def write_json(path, device, config, results, phases):
    with open(path, "w") as f:
        json.dump({"device": device, "config": config, "results": results, "phases": phases}, f,
                  indent=2)


def append_csv(path, device, config, results):
    """One row per method; the header is written when the file is new."""
    append_rows(path, [{"device": device, "model": config["model"], "batch_size": config["batch_size"],
                        "torch": config["torch"], **r} for r in results],
                fields=("device", "model", "batch_size", "torch") + COLUMNS)


def append_rows(path, rows, fields=None):
    """Rows (dicts) appended to a CSV file, the header written when the file is new;
    fields: the columns (default: every key, in the order first seen). Values that
    are not scalars (a dict of floors, a list) are written as JSON."""
    fields = fields or list(dict.fromkeys(k for r in rows for k in r))
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (dict, list, tuple)) else v for k, v in r.items()})


def plot(path, title, results):
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1.2 * len(results) + 2, 3.5))
    names = [r["method"] for r in results]
    values = [r["images_per_s"] for r in results]
    bars = ax.bar(names, values, color="#4c72b0")
    for bar, r in zip(bars, results):
        label = f"{r['vs_sam']:.2f}x SAM" if r["vs_sam"] is not None else ""
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylabel("images / s")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
