"""ZO-SAM under torch.distributed (DDP, gloo on 127.0.0.1, 2 processes spawned
here, each bounded in time): replicas that stay bit-identical and equal a
single-process run on the concatenated batch, and a fault on one rank."""
import datetime
import gc
import os
import pathlib
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import zosam_kernels as zk
from zosam_kernels.optim import FAMILY
from zosam_kernels import sparse
from test_family import per_sample_closure

WORLD = 2
COLLECTIVE_TIMEOUT_S = 10   # how long a rank waits in a collective for a rank that failed
PROCESS_TIMEOUT_S = 180


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, job, out_dir, kwargs):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        result = (JOBS[job] if isinstance(job, str) else job)(rank, world, **kwargs)
    except Exception:
        result = {"error": traceback.format_exc()}
    torch.save(result, pathlib.Path(out_dir) / f"{rank}.pt")
    del result
    gc.collect()   # DDP's reducer freed while the group lives: freed after it, its teardown can hang
    try:
        dist.destroy_process_group()
    except Exception:   # a peer that failed may have left the group broken
        pass


def spawn(job, tmp_path, **kwargs):
    """Run JOBS[job] (or job, a module-level function) as job(rank, world, **kwargs) on
    WORLD processes; their results, by rank."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, WORLD, port, job, str(tmp_path), kwargs))
             for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, f"{len(hung)} rank(s) still running after {PROCESS_TIMEOUT_S} s"
    return [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]


def problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8 * WORLD, 6, generator=g), torch.randint(0, 3, (8 * WORLD,), generator=g))
               for _ in range(20)]
    return model, batches


OPTIMIZERS = {
    "zosam": lambda p, **kw: zk.ZOSAM(p, torch.optim.SGD, lr=0.1, momentum=0.9, n_dirs=2, seed=5, **kw),
    "zosam-adaptive": lambda p, **kw: zk.ZOSAM(p, torch.optim.SGD, lr=0.1, n_dirs=2, adaptive=True, **kw),
    "zolooksam": lambda p, **kw: zk.ZOLookSAM(p, torch.optim.SGD, lr=0.1, n_dirs=2, k=3, **kw),
    "zossam": lambda p, **kw: zk.ZOSSAM(p, torch.optim.SGD, lr=0.1, n_dirs=2, update_interval=3, **kw),
    "sam": lambda p, **kw: zk.SAM(p, torch.optim.SGD, lr=0.1, momentum=0.9, **kw),
    "gsam": lambda p, **kw: zk.GSAM(p, torch.optim.SGD, lr=0.1, alpha=0.3, **kw),
    "looksam": lambda p, **kw: zk.LookSAM(p, torch.optim.SGD, lr=0.1, k=3, **kw),
    "ssam": lambda p, **kw: zk.SSAM(p, torch.optim.SGD, lr=0.1, update_interval=3, **kw),
    "ssam-d": lambda p, **kw: zk.SSAM(p, torch.optim.SGD, lr=0.1, mask="dynamic", update_interval=2,
                                      total_steps=8, **kw),
    "random-direction": lambda p, **kw: FAMILY["random-direction"].build(p, torch.optim.SGD, lr=0.1, rho=0.1,
                                                                         radius_scale="relative", **kw),
    "msam": lambda p, **kw: FAMILY["msam"].build(p, torch.optim.SGD, lr=0.1, momentum=0.9, **kw),
    "rwp-same-batch": lambda p, **kw: FAMILY["rwp"].build(p, torch.optim.SGD, lr=0.1, rho=0.05, batch="same",
                                                          **kw),
}
# Choices made per shard, compared across ranks only, not with one process on the whole
# batch: ESAM selects the top share of each shard for its second pass, zo_batch_fraction
# takes the leading fraction of each shard
PER_SHARD = {
    "esam": lambda p, **kw: zk.ESAM(p, torch.optim.SGD, lr=0.1, beta=1.0, gamma=0.5, **kw),
    "esam-beta": lambda p, **kw: zk.ESAM(p, torch.optim.SGD, lr=0.1, beta=0.5, gamma=0.5, **kw),
    "zosam-frac": lambda p, **kw: zk.ZOSAM(p, torch.optim.SGD, lr=0.1, n_dirs=2, zo_batch_fraction=0.5,
                                           **kw),
    # RWP's and LPF-SGD's split: strided parts of each shard
    "rwp": lambda p, **kw: FAMILY["rwp"].build(p, torch.optim.SGD, lr=0.1, rho=0.05, **kw),
    "lpf-sgd": lambda p, **kw: FAMILY["lpf-sgd"].build(p, torch.optim.SGD, lr=0.1, rho=0.05, draws=2, **kw),
}
SCHEDULES = {"set": lambda m: sparse.SET(m, update_interval=2),
             "rigl": lambda m: sparse.RigL(m, 20, update_interval=2)}


def train(rank, world, name="zosam", steps=20, fail_at=None, schedule=None, resume_at=None,
          checkpoint=None, ddp_kwargs=None):
    """An optimizer over DDP on this rank's shard of each batch (world 1: the whole
    batch, no DDP). schedule: a sparse method at 80 % sparsity; resume_at: save
    the state there and continue from a fresh model, optimizer and masking that load it."""
    model, batches = problem()
    net = DDP(model, **(ddp_kwargs or {})) if world > 1 else model
    masking = sparse.Masking(model, 0.2, seed=3) if schedule else None
    opt = {**OPTIMIZERS, **PER_SHARD}[name](list(net.parameters()), masks=masking)
    topology = SCHEDULES[schedule](masking) if schedule else None
    if masking is not None:
        masking.attach(opt)
    before = None
    for step, (x, y) in enumerate(batches[:steps]):
        if step == resume_at:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, f"{checkpoint}.{rank}")
            model, _ = problem()
            net = DDP(model) if world > 1 else model
            state = torch.load(f"{checkpoint}.{rank}")
            model.load_state_dict(state["model"])
            opt = {**OPTIMIZERS, **PER_SHARD}[name](list(net.parameters()))
            opt.load_state_dict(state["opt"])
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]

        closure = per_sample_closure(net, xs, ys)
        if step == fail_at and rank == 1:
            def closure(indices=None):
                raise RuntimeError("closure failed on rank 1")
        before = [p.detach().clone() for p in model.parameters()]
        try:
            opt.step(closure)
        except Exception as e:
            return {"error_at": step, "message": str(e), "before": before,
                    "after": [p.detach().clone() for p in model.parameters()]}
        if topology is not None:
            topology.step()
    return {"params": [p.detach().clone() for p in model.parameters()],
            "coefficients": getattr(opt, "last_coefficients", None),
            "masks": None if masking is None else {n: m.clone() for n, m in masking.masks.items()},
            "topology_changes": None if masking is None else masking.version}


def train_fsdp(rank, world, name="zosam", steps=10, shard_last=True):
    """The same training with the Linears and the model under FSDP2's fully_shard:
    each rank perturbs its shards only. Returns the full parameters.
    shard_last=False leaves the last Linear's parameters to the root, whose
    parameters FSDP2 keeps gathered after a forward (reshard_after_forward is
    False at the root)."""
    from torch.distributed.fsdp import fully_shard
    model, batches = problem()
    if world > 1:
        for layer in model if shard_last else model[:-1]:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    opt = OPTIMIZERS[name](list(model.parameters()))
    for x, y in batches[:steps]:
        opt.step(per_sample_closure(model, x.chunk(world)[rank], y.chunk(world)[rank]))
    full = [p.full_tensor() if world > 1 else p.detach() for p in model.parameters()]
    local = [p.to_local().numel() for p in model.parameters()] if world > 1 else None
    return {"params": [t.clone() for t in full], "local_numels": local,
            "coefficients": opt.last_coefficients.clone()}


def train_sam_m_sharpness(rank, world, steps=8):
    """SAM with m_sharpness over DDP; returns the parameters."""
    model, batches = problem()
    net = DDP(model)
    opt = zk.SAM(net.parameters(), torch.optim.SGD, lr=0.1, rho=0.05, m_sharpness=True)
    for x, y in batches[:steps]:
        opt.step(per_sample_closure(net, x.chunk(world)[rank], y.chunk(world)[rank]))
    return {"params": [p.detach().clone() for p in model.parameters()]}


def m_sharpness_by_hand(steps=8, rho=0.05, lr=0.1):
    """One process: per shard, eps_r = rho g_r / ||g_r|| from the shard's own
    gradient, the gradient at theta + eps_r on that shard; the update is the
    mean of those gradients over the shards (float64)."""
    model, batches = problem()
    model = model.double()
    params = list(model.parameters())
    for x, y in batches[:steps]:
        update = [torch.zeros_like(p) for p in params]
        for xs, ys in zip(x.double().chunk(WORLD), y.chunk(WORLD)):
            g = torch.autograd.grad(F.cross_entropy(model(xs), ys), params)
            norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
            with torch.no_grad():
                for p, gi in zip(params, g):
                    p.add_(rho * gi / (norm + 1e-12))
            g_eps = torch.autograd.grad(F.cross_entropy(model(xs), ys), params)
            with torch.no_grad():
                for p, gi in zip(params, g):
                    p.sub_(rho * gi / (norm + 1e-12))
            for u, gi in zip(update, g_eps):
                u.add_(gi / WORLD)
        with torch.no_grad():
            for p, u in zip(params, update):
                p.sub_(lr * u)
    return [p.detach().float() for p in params]


def train_own_model(rank, world, process_group=None):
    """Each rank trains a model of its own (another seed), as in a sweep under torchrun."""
    model, batches = problem()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(rank)
    kw = {} if process_group is None else {"process_group": process_group}
    opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, lr=0.1, **kw)
    for x, y in batches[:2 + 3 * rank]:   # different numbers of steps: agreeing would hang
        opt.step(per_sample_closure(model, x, y))
    return {"steps": opt.step_count}


JOBS = {"train": train, "train_own_model": train_own_model, "train_fsdp": train_fsdp,
        "train_sam_m_sharpness": train_sam_m_sharpness}


def test_ddp_replicas_stay_identical_and_equal_one_process_on_the_whole_batch(tmp_path):
    ranks = spawn("train", tmp_path)
    assert not any("error" in r for r in ranks), ranks
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)   # bit for bit
    single = train(0, 1)
    # 20 momentum steps in float32 in another summation order (each rank sums half the batch),
    # through coefficients that differ by their rounding (below): 1.1e-6 apart on one CPU, where
    # a missing or wrong all-reduce moves the weights by 1e-3 or more
    for a, b in zip(ranks[0]["params"], single["params"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # c = (L+ − L−) / 2δ: a float32 ulp of a loss of about 1, over 2δ = 2e-3, is 6e-5
    torch.testing.assert_close(ranks[0]["coefficients"], single["coefficients"], rtol=0, atol=5e-4)


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n != "zosam"] + list(PER_SHARD))
def test_every_optimizer_keeps_the_replicas_identical(name, tmp_path):
    # ESAM's beta < 1 leaves tensors out of its first backward: DDP must be told
    ddp_kwargs = {"find_unused_parameters": True} if name == "esam-beta" else None
    ranks = spawn("train", tmp_path, name=name, steps=8, ddp_kwargs=ddp_kwargs)
    assert not any("error" in r for r in ranks), ranks
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)
    if name in OPTIMIZERS:
        single = train(0, 1, name=name, steps=8)
        for a, b in zip(ranks[0]["params"], single["params"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_sparse_topology_stays_identical_across_ranks(schedule, tmp_path):
    """SET draws its growth at random, RigL grows by the dense gradient: after 4
    topology updates the masks agree bit for bit on both ranks."""
    ranks = spawn("train", tmp_path, steps=8, schedule=schedule)
    assert not any("error" in r for r in ranks), ranks
    assert ranks[0]["topology_changes"] >= 4
    for n, m in ranks[0]["masks"].items():
        assert torch.equal(m, ranks[1]["masks"][n])
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["zosam", "zosam-frac", "zolooksam"])
def test_distributed_resume_reproduces_the_uninterrupted_run(name, tmp_path):
    whole = spawn("train", tmp_path, name=name, steps=10)
    resumed = spawn("train", tmp_path, name=name, steps=10, resume_at=5, checkpoint=str(tmp_path / "ck"))
    for w, r in zip(whole, resumed):
        assert not ("error" in w or "error" in r), (w, r)
        for a, b in zip(w["params"], r["params"]):
            assert torch.equal(a, b)


def test_a_fault_on_one_rank_raises_there_and_times_out_elsewhere(tmp_path):
    """Rank 1's closure raises inside step 3: rank 1 gets that exception, rank 0
    waits in the next collective until the process group's timeout and gets
    an error from it; both keep the weights they had before the step."""
    ranks = spawn("train", tmp_path, fail_at=3)
    assert not any("error" in r for r in ranks), ranks
    assert [r["error_at"] for r in ranks] == [3, 3]
    assert "closure failed on rank 1" in ranks[1]["message"]
    for r in ranks:
        for a, b in zip(r["before"], r["after"]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_ddp_example_runs_under_torchrun():
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), str(root / "examples" / "ddp_train.py"),
                          "--steps", "2", "--batch-size", "8", "--log-every", "1"],
                         capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "replicas bit-identical after 2 steps: True" in run.stdout


@pytest.mark.parametrize("name,shard_last", [("zosam", True), ("zosam-adaptive", True), ("zolooksam", True),
                                             ("zosam", False), ("zolooksam", False)])
def test_fsdp2_shards_perturbed_in_place_equal_one_process(name, shard_last, tmp_path):
    """Under fully_shard each rank holds part of every weight (checked) and moves
    only that part, regenerating the directions at the shard's global offset:
    the result is the single-process run on the whole batch, also for weights
    of the root, which FSDP2 keeps gathered between forwards unless told."""
    ranks = spawn("train_fsdp", tmp_path, name=name, shard_last=shard_last)
    assert not any("error" in r for r in ranks), ranks
    model, _ = problem()
    assert [a + b for a, b in zip(ranks[0]["local_numels"], ranks[1]["local_numels"])] == \
        [p.numel() for p in model.parameters()]
    assert all(n < p.numel() for n, p in zip(ranks[0]["local_numels"], model.parameters()))
    single = train_fsdp(0, 1, name=name)
    for r in ranks:
        for a, b in zip(r["params"], single["params"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fsdp2_refuses_what_it_cannot_shard(tmp_path):
    """ZOSSAM's directions follow a mask over the whole layout: refused, with the reason."""
    ranks = spawn("train_fsdp", tmp_path, name="zossam")
    assert all("NotImplementedError" in r.get("error", "") and "ZOSSAM" in r["error"] for r in ranks)


def test_sam_m_sharpness_takes_eps_from_each_rank_and_the_update_from_all(tmp_path):
    """m_sharpness=True: each rank's eps from its own shard (torch.autograd.grad,
    which DDP does not average), the update DDP's average of the second pass;
    against that computed by hand in float64. The default (global eps) is the
    one-process run on the whole batch: test_every_optimizer_keeps_the_replicas_identical[sam]."""
    ranks = spawn("train_sam_m_sharpness", tmp_path)
    assert not any("error" in r for r in ranks), ranks
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)
    for a, b in zip(ranks[0]["params"], m_sharpness_by_hand()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    model, batches = problem()   # the default, eps from the global batch: one process, whole batch
    opt = zk.SAM(model.parameters(), torch.optim.SGD, lr=0.1, rho=0.05)
    for x, y in batches[:8]:
        opt.step(per_sample_closure(model, x, y))
    assert max((a - b).abs().max() for a, b in zip(ranks[0]["params"], model.parameters())) > 1e-4


@pytest.mark.parametrize("part", [zk.optim.SurrogateGap(), zk.optim.LookAhead(), zk.optim.PerturbationMasking()])
def test_m_sharpness_refused_where_the_first_gradient_does_more(part):
    model, _ = problem()
    with pytest.raises(ValueError, match="m_sharpness: .* uses the gradient at theta for more than eps"):
        zk.Engine(model.parameters(), torch.optim.SGD, ascent=zk.optim.GradientAscent(m_sharpness=True),
                  parts=[part], lr=0.1)
    for cls in (zk.GSAM, zk.LookSAM, zk.SSAM):   # their classes refuse it for the same reason
        with pytest.raises(ValueError, match="m_sharpness: .* uses the gradient at theta for more than eps"):
            cls(model.parameters(), torch.optim.SGD, lr=0.1, m_sharpness=True)


def test_ranks_that_train_models_of_their_own_are_told_and_can_opt_out(tmp_path):
    """Under a default process group whose ranks hold different weights the first
    step raises on every rank (no hang, no silent averaging); process_group=False
    lets each rank train alone."""
    ranks = spawn("train_own_model", tmp_path)
    assert all("ValueError" in r.get("error", "") and "process_group=False" in r["error"] for r in ranks)
    ranks = spawn("train_own_model", tmp_path, process_group=False)
    assert [r.get("steps") for r in ranks] == [2, 5]
