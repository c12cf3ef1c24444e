"""Hugging Face Accelerate (the [hf] extra): accelerator.prepare(model,
optimizer) with our optimizers, on one process against our plain loop (bit for
bit), bf16 included, on 2 gloo processes against one process on the whole
batch (to float32 rounding), and what integrations.accelerate.prepare refuses."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F

accelerate = pytest.importorskip("accelerate", reason="needs the [hf] extra: pip install 'zosam_kernels[hf]'")

import zosam_kernels as zk  # noqa: E402
from zosam_kernels.integrations.accelerate import prepare  # noqa: E402
from test_distributed import WORLD, spawn  # noqa: E402

STEPS, BATCH = 6, 8


def problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(BATCH * WORLD, 6, generator=g), torch.randint(0, 3, (BATCH * WORLD,), generator=g))
               for _ in range(STEPS)]
    return model, batches


def zosam(params):
    return zk.ZOSAM(params, torch.optim.SGD, rho=0.05, n_dirs=2, lr=0.1, momentum=0.9)


def plain_loop(model, batches, autocast=None):
    opt = zosam(model.parameters())
    for x, y in batches:
        def closure():
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                return F.cross_entropy(model(x), y)
        opt.step(closure)
    return model


def accelerated_loop(accelerator, model, batches):
    model = prepare(accelerator, model)
    opt = prepare(accelerator, zosam(model.parameters()))
    for x, y in batches:
        opt.step(lambda: F.cross_entropy(model(x), y))
    return accelerator.unwrap_model(model)


@pytest.fixture
def fresh_state():
    """Accelerate keeps its state per process: each test starts from none."""
    accelerate.state.AcceleratorState._reset_state(True)
    yield
    accelerate.state.AcceleratorState._reset_state(True)


# Accelerate applies fp16 (autocast and a GradScaler) on GPUs only: on the CPU it is float32
@pytest.mark.parametrize("precision, autocast", [("no", None), ("bf16", torch.bfloat16), ("fp16", None)])
def test_one_process_equals_the_plain_loop(precision, autocast, fresh_state):
    model, batches = problem()
    reference = plain_loop(copy.deepcopy(model), batches, autocast)
    trained = accelerated_loop(accelerate.Accelerator(cpu=True, mixed_precision=precision), model, batches)
    for a, b in zip(trained.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    if autocast is not None:   # the precision bit: not float32's weights
        full = plain_loop(problem()[0], batches, None)
        assert any(not torch.equal(a, b) for a, b in zip(full.parameters(), reference.parameters()))


def test_one_process_takes_model_and_optimizer_in_one_call(fresh_state):
    model, batches = problem()
    reference = plain_loop(copy.deepcopy(model), batches)
    model, opt = prepare(accelerate.Accelerator(cpu=True), model, zosam(model.parameters()))
    for x, y in batches:
        opt.step(lambda: F.cross_entropy(model(x), y))
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_gradient_accumulation_is_refused_with_the_reason(fresh_state):
    model, _ = problem()
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2\): a ZOSAM step evaluates every pass"):
        prepare(accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2), model, zosam(model.parameters()))


def test_gradient_accumulation_set_after_prepare_is_refused_at_the_step(fresh_state):
    """accumulate() would skip step(closure) on every other batch: refused at the first step."""
    model, batches = problem()
    accelerator = accelerate.Accelerator(cpu=True)
    model = prepare(accelerator, model)
    opt = prepare(accelerator, zosam(model.parameters()))
    ours = opt.optimizer
    x, y = batches[0]
    opt.step(lambda: F.cross_entropy(model(x), y))
    accelerator.gradient_accumulation_steps = 2
    for x, y in batches[1:3]:
        with accelerator.accumulate(model):
            with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2\): a ZOSAM step"):
                opt.step(lambda: F.cross_entropy(model(x), y))
    assert ours.step_count == 1


def test_a_grad_scaler_is_refused_with_the_reason(fresh_state):
    model, _ = problem()
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision="fp16")
    accelerator.scaler = torch.amp.GradScaler("cpu")   # what Accelerate gives fp16 on a GPU
    with pytest.raises(ValueError, match="mixed_precision='fp16'.*GradScaler.*use mixed_precision='bf16'"):
        prepare(accelerator, model, zosam(model.parameters()))


def two_processes(rank, world):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    accelerator = accelerate.Accelerator(cpu=True)
    model, batches = problem()
    shards = [(x[rank * BATCH:(rank + 1) * BATCH], y[rank * BATCH:(rank + 1) * BATCH]) for x, y in batches]
    try:
        prepare(accelerator, copy.deepcopy(model), zosam(model.parameters()))
        refused = None
    except ValueError as e:
        refused = str(e)
    trained = accelerated_loop(accelerator, model, shards)
    return {"refused": refused,"type": accelerator.distributed_type.value,
            "params": [p.detach().clone() for p in trained.parameters()]}


def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    ranks = spawn(two_processes, tmp_path)
    assert all("error" not in r for r in ranks), [r.get("error") for r in ranks]
    assert ranks[0]["type"] == "MULTI_CPU"
    assert "prepare the model first" in ranks[0]["refused"]
    model, batches = problem()
    reference = plain_loop(model, batches)
    for a, b, c in zip(ranks[0]["params"], ranks[1]["params"], reference.parameters()):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c.detach(), rtol=1e-5, atol=1e-6)
