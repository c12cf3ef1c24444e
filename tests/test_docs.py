"""The README and the design document: it opens with install, the Python API
and the trainers; every Python snippet of the README runs
(in README order, each in a fresh namespace holding what the snippets take as
given: a small model, a loader, a batch), every zosam-train / zosam-bench
command it shows parses, every extra it installs exists, and every citation of
the design document names the one in the repository."""
import importlib.metadata
import os
import re
import shlex
import subprocess
import textwrap

import pytest
import torch
import torch.nn.functional as F

import zosam_kernels as zk
from zosam_kernels.bench.cli import parse as parse_bench
from zosam_kernels.train.cli import parser as train_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def python_snippets():
    """The ```python blocks, dedented (some sit inside list items)."""
    return [textwrap.dedent(m.group(2)) for m in re.finditer(r"^( *)```python\n(.*?)^\1```", README, re.M | re.S)]


def commands():
    """zosam-train and zosam-bench commands: inline code and indented blocks (with \\ continuations)."""
    found = [" ".join(m.group(1).split()) for m in re.finditer(r"`(zosam-(?:train|bench) -[^`]*)`", README)]
    block = re.sub(r"\\\n\s*", " ", README)
    found += [line.split("#")[0].strip() for line in block.split("\n") if re.match(r" {4,}zosam-(train|bench) ", line)]
    return found


def prelude():
    """What the snippets take as given."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    data = torch.utils.data.TensorDataset(torch.randn(32, 12), torch.randint(0, 3, (32,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    x, y = next(iter(loader))
    ids = torch.randint(0, 100, (16, 8))
    return dict(torch=torch, F=F, zk=zk, model=model, loader=loader, x=x, y=y, epochs=1,
                opt=zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1), device=torch.device("cpu"),
                x_shard=x, y_shard=y, tokens=[{"input_ids": i, "labels": i[0] % 2} for i in ids])


SNIPPETS = python_snippets()


def test_the_readme_starts_with_install_the_python_api_and_the_trainers():
    sections = re.findall(r"^## (.+)$", README, re.M)
    assert sections[:3] == ["Install", "Python API", "The trainers: Lightning, the Hugging Face Trainer, Accelerate"]
    assert sections.index("Command line") < sections.index("Benchmarks") < sections.index("Internals")
    assert re.search(r"^### Composing an optimizer$", README, re.M)
    # the verdict of the study comes right after the trainers, with its figure on disk
    assert sections[3] == "What it buys you"
    assert os.path.exists(os.path.join(ROOT, "docs", "study_gain.png"))


def test_the_readme_has_its_snippets():
    assert len(SNIPPETS) >= 10 and any("SharpnessAwareTrainer" in s for s in SNIPPETS)


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_python_snippet_runs(index, tmp_path, monkeypatch):
    code = SNIPPETS[index]
    for name in ("lightning", "transformers", "accelerate"):
        if f"import {name}" in code:
            pytest.importorskip(name, reason=f"the snippet needs {name}: "
                                             "pip install 'zosam_kernels[lightning]' or '[hf]'")
    if "accelerate" in code:
        import accelerate
        accelerate.state.AcceleratorState._reset_state(True)
    monkeypatch.chdir(tmp_path)   # what trainers write (checkpoints, logs) stays there
    namespace = prelude()
    if "DDP(" in code:   # one process of a process group
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
        from test_distributed import free_port
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        namespace["DDP"] = DistributedDataParallel
        try:
            exec(compile(code, f"README snippet {index}", "exec"), namespace)
        finally:
            namespace.clear()
            dist.destroy_process_group()
    else:
        exec(compile(code, f"README snippet {index}", "exec"), namespace)


@pytest.mark.parametrize("command", commands())
def test_commands_parse(command):
    argv = shlex.split(command)
    try:
        if argv[0] == "zosam-train":
            train_parser().parse_args(argv[1:])
        else:
            parse_bench(argv[1:])
    except SystemExit as e:
        assert e.code == 0, f"{command}: refused by the parser"


def test_the_extras_it_installs_exist():
    extras = set(importlib.metadata.metadata("zosam_kernels").get_all("Provides-Extra"))
    for wanted in re.findall(r'pip install --no-build-isolation "\.\[([^\]]+)\]"', README):
        assert set(wanted.split(",")) <= extras, wanted


def test_design_citations_name_the_document_in_the_repository():
    assert os.path.exists(os.path.join(ROOT, "docs", "DESIGN.md"))
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    stray = []
    for name in files:
        if name.endswith((".py", ".md", ".sh", ".cpp", ".h", ".toml", "Makefile")) and name != "tests/test_docs.py":
            text = open(os.path.join(ROOT, name), errors="replace").read()
            stray += [f"{name}: {line.strip()}" for line in text.splitlines()
                      if re.search(r"(?<!docs/)DESIGN\.md", line)]
    assert not stray, stray
