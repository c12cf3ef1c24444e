"""Lightning (the [lightning] extra): SharpnessAwareModule under automatic
optimization, and the manual-optimization recipe, each against our plain loop
`opt.step(closure)` on the same batches, from the same weights and seeds: bit
for bit, the order of operations being the same; DDP through Lightning on 2
gloo processes against one process on the whole batch (to float32 rounding)."""
import os

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch",
                         reason="needs the [lightning] extra: pip install 'zosam_kernels[lightning]'")

import zosam_kernels as zk  # noqa: E402
from zosam_kernels.integrations.lightning import SharpnessAwareModule  # noqa: E402
from test_distributed import spawn  # noqa: E402

BATCH, SAMPLES = 16, 64


def make_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 3))


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, 8, generator=g)
    return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def loader():
    return torch.utils.data.DataLoader(data(), batch_size=BATCH, shuffle=False)


def zosam(params):
    return zk.ZOSAM(params, torch.optim.SGD, rho=0.05, n_dirs=2, lr=0.1, momentum=0.9)


def sam(params):
    return zk.SAM(params, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)


def zolooksam(params):
    return zk.ZOLookSAM(params, torch.optim.SGD, rho=0.05, k=2, lr=0.1)


def loss_of(net, x, y, autocast=None):
    if autocast is None:
        return F.cross_entropy(net(x), y)
    with torch.autocast("cpu", dtype=autocast):
        return F.cross_entropy(net(x), y)


def plain_loop(make_opt, epochs, autocast=None, schedule=None, clip_value=None):
    """The reference: our README's loop, with what Lightning adds written out."""
    net = make_net()
    opt = make_opt(net.parameters())
    sched = schedule(opt) if schedule else None
    if clip_value is not None:   # Lightning clips the gradient about to be applied
        opt.base_optimizer.register_step_pre_hook(
            lambda *_: torch.nn.utils.clip_grad_value_(net.parameters(), clip_value))
    for _ in range(epochs):
        for x, y in loader():
            opt.step(lambda: loss_of(net, x, y, autocast))
            if sched:
                sched.step()
    return net


class Net(SharpnessAwareModule):
    def __init__(self, make_opt, schedule=None):
        super().__init__()
        self.net, self.make_opt, self.schedule = make_net(), make_opt, schedule
        self.losses = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt = self.make_opt(self.parameters())
        if self.schedule is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.schedule(opt), "interval": "step"}}


def trainer(epochs, **kwargs):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def assert_same_weights(module_net, reference):
    for (name, a), b in zip(module_net.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("make_opt", [zosam, sam, zolooksam])
def test_automatic_optimization_equals_the_plain_loop(make_opt):
    model = Net(make_opt)
    trainer(3).fit(model, loader())
    assert_same_weights(model.net, plain_loop(make_opt, 3))


def test_lr_scheduler_per_step():
    schedule = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)  # noqa: E731
    model = Net(zosam, schedule)
    trainer(2).fit(model, loader())
    reference = plain_loop(zosam, 2, schedule=schedule)
    assert_same_weights(model.net, reference)
    assert not torch.equal(reference[0].weight, plain_loop(zosam, 2)[0].weight)   # the schedule bit


def test_gradient_clipping_by_norm_is_max_grad_norm():
    model = Net(zosam)
    trainer(2, gradient_clip_val=0.05).fit(model, loader())
    clipped = lambda params: zk.ZOSAM(params, torch.optim.SGD, rho=0.05, n_dirs=2, lr=0.1, momentum=0.9,  # noqa: E731
                                      max_grad_norm=0.05)
    reference = plain_loop(clipped, 2)
    assert_same_weights(model.net, reference)
    assert not torch.equal(reference[0].weight, plain_loop(zosam, 2)[0].weight)   # the clip bit


def test_gradient_clipping_by_value():
    model = Net(sam)
    trainer(2, gradient_clip_val=0.01, gradient_clip_algorithm="value").fit(model, loader())
    reference = plain_loop(sam, 2, clip_value=0.01)
    assert_same_weights(model.net, reference)
    assert not torch.equal(reference[0].weight, plain_loop(sam, 2)[0].weight)   # the clip bit


def test_bf16_mixed_is_autocast_in_every_pass_and_clips():
    model = Net(zosam)
    trainer(2, precision="bf16-mixed", gradient_clip_val=0.05).fit(model, loader())
    clipped = lambda params: zk.ZOSAM(params, torch.optim.SGD, rho=0.05, n_dirs=2, lr=0.1, momentum=0.9,  # noqa: E731
                                      max_grad_norm=0.05)
    reference = plain_loop(clipped, 2, autocast=torch.bfloat16)
    assert_same_weights(model.net, reference)
    assert not torch.equal(reference[0].weight, plain_loop(zosam, 2)[0].weight)


def test_checkpoint_resumes_bit_for_bit(tmp_path):
    first = Net(zosam)
    t = trainer(2)
    t.fit(first, loader())
    t.save_checkpoint(tmp_path / "two.ckpt")
    resumed = Net(zosam)
    trainer(4).fit(resumed, loader(), ckpt_path=tmp_path / "two.ckpt")
    assert resumed.trainer.optimizers[0].step_count == 4 * SAMPLES // BATCH
    assert_same_weights(resumed.net, plain_loop(zosam, 4))


class Hooks(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.seen.append(all(p.grad is not None for p in module.parameters()))


def test_on_before_optimizer_step_runs_once_per_step_with_the_gradient():
    hooks = Hooks()
    trainer(1, callbacks=[hooks]).fit(Net(zosam), loader())
    assert hooks.seen == [True] * (SAMPLES // BATCH)


def test_other_optimizers_train_as_under_lightning_module():
    model = Net(lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
    trainer(2).fit(model, loader())
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        for x, y in loader():
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    assert_same_weights(model.net, net)


@pytest.mark.parametrize("kwargs, message", [
    (dict(accumulate_grad_batches=2), "accumulate_grad_batches=2"),
    # on the CPU, precision="16-mixed" means bf16; a GPU's 16-mixed is this plugin with its GradScaler
    (dict(plugins=[pl.plugins.precision.MixedPrecision("16-mixed", "cpu")]), 'precision="16-mixed"'),
])
def test_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        trainer(1, **kwargs).fit(Net(zosam), loader())


def test_a_pass_without_loss_is_an_error():
    class Skips(Net):
        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(RuntimeError, match="training_step returned no loss"):
        trainer(1).fit(Skips(zosam), loader())


class Manual(pl.LightningModule):
    """The README's manual-optimization recipe."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.net = make_net()

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.optimizers().step(lambda: F.cross_entropy(self.net(x), y))
        self.log("train_loss", loss)

    def configure_optimizers(self):
        return zosam(self.parameters())


def test_manual_optimization_recipe(tmp_path):
    model = Manual()
    t = trainer(2)
    t.fit(model, loader())
    assert_same_weights(model.net, plain_loop(zosam, 2))
    t.save_checkpoint(tmp_path / "manual.ckpt")
    resumed = Manual()
    trainer(3).fit(resumed, loader(), ckpt_path=tmp_path / "manual.ckpt")
    assert_same_weights(resumed.net, plain_loop(zosam, 3))


class Plain(Net):
    """No BatchNorm: DDP's shards then see what one process sees of the whole batch."""

    def __init__(self, make_opt):
        super().__init__(make_opt)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def lightning_ddp(rank, world, make_opt):
    os.environ.update(WORLD_SIZE=str(world), LOCAL_RANK=str(rank), NODE_RANK="0")   # launched here, not by Lightning
    model = Plain(make_opt)
    # rank r's batch t: samples 2(t B + j) + r, j < B; together the samples of batch t of 2B
    shard = torch.utils.data.Subset(data(), range(rank, SAMPLES, world))
    pl.Trainer(max_epochs=2, accelerator="cpu", devices=world, strategy="ddp", logger=False,
               use_distributed_sampler=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(model, torch.utils.data.DataLoader(shard, batch_size=BATCH))
    return {"params": [p.detach().clone() for p in model.net.parameters()], "steps": model.trainer.global_step}


@pytest.mark.parametrize("make_opt", [zosam, sam])
def test_ddp_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path, make_opt):
    ranks = spawn(lightning_ddp, tmp_path, make_opt=make_opt)
    assert all("error" not in r for r in ranks), [r.get("error") for r in ranks]
    assert [r["steps"] for r in ranks] == [2 * SAMPLES // (2 * BATCH)] * 2
    whole = Plain(make_opt).net
    opt = make_opt(whole.parameters())
    for _ in range(2):
        for x, y in torch.utils.data.DataLoader(data(), batch_size=2 * BATCH, shuffle=False):
            opt.step(lambda: F.cross_entropy(whole(x), y))
    for a, b, c in zip(ranks[0]["params"], ranks[1]["params"], whole.parameters()):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c.detach(), rtol=1e-5, atol=1e-6)


def test_a_plain_lightning_module_is_told_which_adapter_to_use():
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = make_net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return zosam(self.parameters())

    with pytest.raises(RuntimeError, match="SharpnessAwareModule"):
        trainer(1).fit(Plain(), loader())


def test_accumulation_set_after_the_first_step_is_refused():
    class Later(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            trainer.accumulate_grad_batches = 2

    model = Net(zosam)
    with pytest.raises(ValueError, match="accumulate_grad_batches=2"):
        trainer(1, callbacks=[Later()]).fit(model, loader())
