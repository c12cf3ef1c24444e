"""Which weights a Masking covers: attention projections (fused in_proj_weight, separate
q/k/v when kdim/vdim differ, out_proj), timm-style fused qkv Linear, RNN and transposed-conv
weights; what it leaves dense; include= / exclude=; density() against counts of the weights'
zeros made here; the sparse methods on a transformer."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zosam_kernels as zk
from zosam_kernels import sparse
from test_sparse_dynamic import train_step

E, SEQ, VOCAB, CLASSES = 16, 5, 20, 3


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, E)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, SEQ, E))
        self.encoder = nn.TransformerEncoderLayer(E, 4, 2 * E, dropout=0.0, batch_first=True)
        self.head = nn.Linear(E, CLASSES)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.pos_embed).mean(1))


TRANSFORMER_MASKED = ["encoder.self_attn.in_proj_weight", "encoder.self_attn.out_proj.weight",
                      "encoder.linear1.weight", "encoder.linear2.weight", "head.weight"]


class Attention(nn.Module):
    """timm's ViT attention: one Linear `qkv` makes queries, keys and values."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(E, 3 * E)
        self.proj = nn.Linear(E, E)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 4, E // 4).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, E))


class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 5, E))
        self.patch_embed = nn.Conv2d(3, E, 4, stride=4)
        self.norm = nn.LayerNorm(E)
        self.attn = Attention()
        self.head = nn.Linear(E, CLASSES)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.attn(self.norm(x))[:, 0])


VIT_MASKED = ["patch_embed.weight", "attn.qkv.weight", "attn.proj.weight", "head.weight"]


def transformer(seed):
    torch.manual_seed(seed)
    model = TinyTransformer()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (8, SEQ), generator=g)
    return model, x, torch.randint(0, CLASSES, (8,), generator=g)


def vit(seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    return TinyViT(), torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, CLASSES, (8,), generator=g)


def named(model):
    return dict(model.named_parameters())


def nonzero(model, names):
    return sum(int(torch.count_nonzero(named(model)[n])) for n in names)


def numel(model, names):
    return sum(named(model)[n].numel() for n in names)


def check_masked_set(model, masking, masked, density):
    """The masking covers exactly `masked`, leaves every other parameter dense and listed,
    keeps exactly round(density · n) weights, and its densities are the counts of zeros."""
    params = named(model)
    assert list(masking.params) == masked
    assert all(masking.params[n] is params[n] for n in masked)
    dense = [n for n in params if n not in masked]
    assert list(masking.dense_params()) == dense
    assert all(masking.dense_params()[n] is params[n] for n in dense)
    n_masked = numel(model, masked)
    active = nonzero(model, masked)
    assert active == round(density * n_masked)
    assert masking.density() == active / n_masked
    n_dense = numel(model, dense)
    assert masking.density(of="all") == (active + n_dense) / (n_masked + n_dense)


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
def test_the_attention_projections_are_masked_and_the_rest_is_listed(distribution):
    model, _, _ = transformer(0)
    masking = sparse.Masking(model, 0.1, distribution)
    check_masked_set(model, masking, TRANSFORMER_MASKED, 0.1)
    in_proj = model.encoder.self_attn.in_proj_weight
    assert in_proj.shape == (3 * E, E) and (in_proj == 0).float().mean() > 0.5
    # the trial: of the >= 2-D weights, only the embeddings are dense now (model
    # order: a module's own parameters come before its children's)
    assert [n for n, p in masking.dense_params().items() if p.dim() >= 2] == ["pos_embed", "embed.weight"]


def test_vit_fused_qkv_conv_stem_and_tokens():
    model, _, _ = vit(0)
    check_masked_set(model, sparse.Masking(model, 0.1), VIT_MASKED, 0.1)
    # cls_token and pos_embed come first in model order: dense_first means the first masked layer
    model, _, _ = vit(0)
    masking = sparse.Masking(model, 0.1, dense_first=True, dense_last=True)
    check_masked_set(model, masking, VIT_MASKED[1:-1], 0.1)
    assert (model.patch_embed.weight != 0).all() and (model.head.weight != 0).all()


def test_erk_budgets_of_a_fused_in_proj_follow_its_shape():
    model, _, _ = transformer(1)
    sparse.Masking(model, 0.1, "erk")
    params = named(model)
    # ERK: count_l ≈ ε · (Σ shape_l / Π shape_l) · n_l = ε · Σ shape_l, within 1, one ε for all;
    # so the ε_l = count_l / Σ shape_l measured here from the zeros differ by < 1/Σa + 1/Σb
    sums = {n: sum(params[n].shape) for n in TRANSFORMER_MASKED}
    eps = {n: int(torch.count_nonzero(params[n])) / sums[n] for n in TRANSFORMER_MASKED}
    assert all((params[n] == 0).any() for n in TRANSFORMER_MASKED)     # no layer made dense here
    for a in TRANSFORMER_MASKED:
        for b in TRANSFORMER_MASKED:
            assert abs(eps[a] - eps[b]) < 1 / sums[a] + 1 / sums[b], (a, b)
    assert nonzero(model, TRANSFORMER_MASKED) == round(0.1 * numel(model, TRANSFORMER_MASKED))


def test_separate_q_k_v_projections_and_each_weight_once():
    class CrossAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(E, 4, kdim=8, vdim=12, add_bias_kv=True, batch_first=True)

    torch.manual_seed(2)
    model = CrossAttention()
    masking = sparse.Masking(model, 0.2)
    check_masked_set(model, masking, ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight",
                                      "attn.out_proj.weight"], 0.2)
    assert {"attn.bias_k", "attn.bias_v", "attn.in_proj_bias"} <= set(masking.dense_params())
    # a layer used twice and a weight tied between two layers are masked once
    torch.manual_seed(3)
    lin, other = nn.Linear(E, E, bias=False), nn.Linear(E, E, bias=False)
    other.weight = lin.weight
    model = nn.Sequential(lin, nn.ReLU(), lin, other)
    masking = sparse.Masking(model, 0.25)
    assert list(masking.params) == ["0.weight"]
    check_masked_set(model, masking, ["0.weight"], 0.25)


def test_rnn_and_transposed_conv_weights():
    torch.manual_seed(4)
    model = nn.ModuleDict({"lstm": nn.LSTM(4, 8, 1, bidirectional=True, proj_size=3),
                           "cell": nn.GRUCell(4, 6), "up": nn.ConvTranspose2d(3, 2, 3)})
    masked = ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_hr_l0", "lstm.weight_ih_l0_reverse",
              "lstm.weight_hh_l0_reverse", "lstm.weight_hr_l0_reverse", "cell.weight_ih", "cell.weight_hh",
              "up.weight"]
    check_masked_set(model, sparse.Masking(model, 0.3), masked, 0.3)


def test_frozen_parameters_are_neither_masked_nor_listed():
    model, _, _ = transformer(5)
    model.head.requires_grad_(False)
    masking = sparse.Masking(model, 0.1)
    assert list(masking.params) == TRANSFORMER_MASKED[:-1]
    assert not {"head.weight", "head.bias"} & set(masking.dense_params())
    assert (model.head.weight != 0).all()


def test_include_and_exclude_by_name_and_pattern():
    model, _, _ = transformer(6)
    masking = sparse.Masking(model, 0.1, exclude="encoder.linear*", include=["embed.weight", "pos_*"])
    masked = ["pos_embed", "embed.weight", "encoder.self_attn.in_proj_weight",
              "encoder.self_attn.out_proj.weight", "head.weight"]
    check_masked_set(model, masking, masked, 0.1)
    assert (model.encoder.linear1.weight != 0).all() and (model.encoder.linear2.weight != 0).all()
    # including a weight masked anyway changes nothing
    model, _, _ = transformer(6)
    check_masked_set(model, sparse.Masking(model, 0.1, include="head.weight"), TRANSFORMER_MASKED, 0.1)


def test_bad_include_and_exclude_are_named():
    model, _, _ = transformer(7)
    model.embed.requires_grad_(False)
    cases = [({"include": "encoder.attn*"}, ValueError, "include: 'encoder.attn\\*' matches none"),
             ({"exclude": "embed.weight"}, ValueError, "exclude: 'embed.weight' matches none of the "
                                                       "weights masked by default"),
             ({"exclude": "encoder.*.bias"}, ValueError, "exclude"),
             ({"include": "encoder.norm*"}, ValueError, "not at least 2-D"),
             ({"include": "embed.weight"}, ValueError, "not trainable"),
             ({"include": "head.weight", "exclude": "head.*"}, ValueError, "also kept dense"),
             ({"include": "head.weight", "dense_last": True}, ValueError, "also kept dense"),
             ({"include": 3}, TypeError, "include must be"),
             ({"exclude": ["head.weight", None]}, TypeError, "exclude must be"),
             ({"exclude": "*"}, ValueError, "no weight left to mask")]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            sparse.Masking(model, 0.1, **kwargs)
    masking = sparse.Masking(model, 0.1)
    with pytest.raises(ValueError, match="of must be"):
        masking.density(of="weights")


@pytest.mark.parametrize("opt_name", ["zosam", "sgd"])
def test_in_proj_weight_stays_sparse_through_optimizer_steps(opt_name):
    model, x, y = transformer(8)
    masking = sparse.Masking(model, 0.1)
    if opt_name == "zosam":
        opt = zk.ZOSAM(model.parameters(), torch.optim.SGD, masks=masking, lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masking.attach(opt)
    in_proj = model.encoder.self_attn.in_proj_weight
    zeros = in_proj == 0
    before = in_proj.detach().clone()
    n_masked = numel(model, TRANSFORMER_MASKED)
    for _ in range(3):
        train_step(opt, model, lambda: F.cross_entropy(model(x), y))
        assert torch.equal(in_proj == 0, zeros)          # the pruned ones, and only they, are 0
        assert nonzero(model, TRANSFORMER_MASKED) == round(0.1 * n_masked)
    assert zeros.float().mean() > 0.5
    assert not torch.equal(in_proj.detach()[~zeros], before[~zeros])     # the active ones train


SCHEDULES = {
    "set": lambda m: sparse.SET(m, update_interval=1),
    "rigl": lambda m: sparse.RigL(m, 6, update_interval=1),
    "mest": lambda m: sparse.MEST(m, 6, update_interval=1),
    "dsr": lambda m: sparse.DSR(m, update_interval=1, initial_threshold=0.05),
}


@pytest.mark.parametrize("method", list(SCHEDULES))
def test_dynamic_methods_move_the_attention_weights(method):
    model, x, y = transformer(9)
    masking = sparse.Masking(model, 0.1, include="embed.weight")
    opt = masking.attach(zk.ZOSAM(model.parameters(), torch.optim.SGD, masks=masking, lr=0.1,
                                  momentum=0.9))
    schedule = SCHEDULES[method](masking)
    masked = ["embed.weight", *TRANSFORMER_MASKED]
    in_proj = model.encoder.self_attn.in_proj_weight
    start = in_proj != 0
    for _ in range(4):
        train_step(opt, model, lambda: F.cross_entropy(model(x), y))
        schedule.step()
        for n, p in masking.params.items():
            assert (p.detach()[~masking.masks[n]] == 0).all()
        assert sum(int(m.sum()) for m in masking.masks.values()) == round(0.1 * numel(model, masked))
        assert nonzero(model, masked) <= round(0.1 * numel(model, masked))   # grown weights start at 0
    assert not torch.equal(masking.masks["encoder.self_attn.in_proj_weight"], start)


@pytest.mark.parametrize("method", ["snip", "grasp", "magnitude"])
def test_pruning_at_init_and_lottery_ticket_on_the_new_weights(method):
    model, x, y = transformer(10)
    masking = sparse.Masking(model, 0.2, include="pos_embed", init="dense")
    sparse.prune_at_init_(masking, method, F.cross_entropy, [(x, y)], samples_per_class=1)
    check_masked_set(model, masking, ["pos_embed", *TRANSFORMER_MASKED], 0.2)
    opt = masking.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    lth = sparse.LotteryTicket(masking, prune_fraction=0.5)
    train_step(opt, model, lambda: F.cross_entropy(model(x), y))
    lth.step()
    active = nonzero(model, masking.params)
    lth.prune_and_rewind_()
    assert nonzero(model, masking.params) == active - math.floor(0.5 * active)
