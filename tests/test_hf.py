"""The Hugging Face Trainer (the [hf] extra): SharpnessAwareTrainer on a tiny
BERT built from a config (nothing downloaded), against our plain loop
`opt.step(closure)` on the same batches from the same weights: bit for bit,
the order of operations being the same."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the [hf] extra: pip install 'zosam_kernels[hf]'")

import zosam_kernels as zk  # noqa: E402
from zosam_kernels.integrations.hf import SharpnessAwareTrainer  # noqa: E402

BATCH, SAMPLES, LENGTH = 8, 32, 6


def make_model():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=LENGTH, num_labels=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


def dataset():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 30, (SAMPLES, LENGTH), generator=g)
    return [{"input_ids": i, "labels": (i[0] % 2).long()} for i in ids]


def batches():
    data = dataset()
    return [{k: torch.stack([d[k] for d in data[i:i + BATCH]]) for k in data[0]} for i in range(0, SAMPLES, BATCH)]


def zosam(params, **kwargs):
    return zk.ZOSAM(params, torch.optim.AdamW, rho=0.05, n_dirs=2, lr=1e-2, **kwargs)


def sam(params, **kwargs):
    return zk.SAM(params, torch.optim.AdamW, rho=0.05, lr=1e-2, **kwargs)


def plain_loop(model, make_opt, epochs, autocast=None, schedule=None, **kwargs):
    opt = make_opt(model.parameters(), **kwargs)
    scheduler = schedule(opt, epochs * len(batches())) if schedule else None

    def loss(batch):
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            return model(**batch).loss

    model.train()
    for _ in range(epochs):
        for batch in batches():
            opt.step(lambda: loss(batch))
            if scheduler is not None:
                scheduler.step()
    return model


def train(model, make_opt, out, epochs, resume=None, **kwargs):
    options = {"max_grad_norm": 0.0, "save_strategy": "no", "logging_strategy": "no",
               "lr_scheduler_type": "constant", **kwargs}
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=epochs, use_cpu=True,
        train_sampling_strategy="sequential", report_to="none", disable_tqdm=True, **options)
    trainer = SharpnessAwareTrainer(model=model, args=args, train_dataset=dataset(),
                                    optimizers=(make_opt(model.parameters()), None))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("make_opt", [zosam, sam])
def test_trainer_equals_the_plain_loop(tmp_path, make_opt):
    model = make_model()
    reference = plain_loop(copy.deepcopy(model), make_opt, 2)
    trainer = train(model, make_opt, tmp_path, 2)
    assert_same_weights(model, reference)
    assert trainer.state.global_step == 2 * SAMPLES // BATCH


@pytest.mark.parametrize("make_opt", [zosam, sam])
@pytest.mark.parametrize("kind, warmup", [("linear", 2), ("cosine", 0)])
def test_the_lr_schedule_and_warmup_drive_the_optimizer(tmp_path, make_opt, kind, warmup):
    """The Trainer's scheduler sets the learning rate the optimizer steps with:
    the weights equal our loop under the same schedule, and differ from a
    constant learning rate's."""
    def schedule(opt, total):
        return transformers.get_scheduler(kind, opt, num_warmup_steps=warmup, num_training_steps=total)
    model = make_model()
    reference = plain_loop(copy.deepcopy(model), make_opt, 2, schedule=schedule)
    train(model, make_opt, tmp_path, 2, lr_scheduler_type=kind, warmup_steps=warmup)
    assert_same_weights(model, reference)
    constant = plain_loop(make_model(), make_opt, 2)
    assert (reference.classifier.weight - constant.classifier.weight).abs().max() > 1e-3


def test_the_stand_in_shares_the_groups_after_loading_a_state():
    """Accelerate loads a state into the stand-in the scheduler holds: the groups stay shared."""
    from zosam_kernels.integrations.hf import StepTakenInTrainingStep
    ours = zosam(make_model().parameters())
    stand_in = StepTakenInTrainingStep(ours)
    stand_in.load_state_dict(stand_in.state_dict())
    assert stand_in.param_groups is ours.param_groups is ours.base_optimizer.param_groups
    assert stand_in.state is ours.state is ours.base_optimizer.state


def test_max_grad_norm_clips_the_applied_gradient(tmp_path):
    model = make_model()
    reference = plain_loop(copy.deepcopy(model), zosam, 1, max_grad_norm=0.1)
    train(model, zosam, tmp_path, 1, max_grad_norm=0.1)
    assert_same_weights(model, reference)
    assert not torch.equal(reference.classifier.weight, plain_loop(make_model(), zosam, 1).classifier.weight)


def test_bf16_is_autocast_in_every_pass(tmp_path):
    model = make_model()
    reference = plain_loop(copy.deepcopy(model), zosam, 1, autocast=torch.bfloat16)
    train(model, zosam, tmp_path, 1, bf16=True)
    assert_same_weights(model, reference)
    assert not torch.equal(reference.classifier.weight, plain_loop(make_model(), zosam, 1).classifier.weight)


def test_checkpoint_resumes_bit_for_bit(tmp_path):
    steps_per_epoch = SAMPLES // BATCH
    first = make_model()
    reference = plain_loop(copy.deepcopy(first), zosam, 3)
    train(first, zosam, tmp_path, 1, save_strategy="epoch")
    resumed = make_model()   # other weights until the checkpoint is loaded
    trainer = train(resumed, zosam, tmp_path, 3, resume=str(tmp_path / f"checkpoint-{steps_per_epoch}"))
    assert trainer.optimizer.optimizer.optimizer.step_count == 3 * steps_per_epoch
    assert_same_weights(resumed, reference)


@pytest.mark.parametrize("kwargs, message", [
    (dict(gradient_accumulation_steps=2), "gradient_accumulation_steps=2"),
    (dict(fp16=True), "fp16=True"),
])
def test_refused_with_the_reason(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(make_model(), zosam, tmp_path, 1, **kwargs)


def test_accumulation_set_during_training_is_refused_at_the_next_step(tmp_path):
    class Later(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            args.gradient_accumulation_steps = 2

    model = make_model()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=BATCH,
                                          num_train_epochs=1, use_cpu=True, report_to="none", disable_tqdm=True,
                                          save_strategy="no", logging_strategy="no", max_grad_norm=0.0)
    opt = zosam(model.parameters())
    trainer = SharpnessAwareTrainer(model=model, args=args, train_dataset=dataset(), optimizers=(opt, None),
                                    callbacks=[Later()])
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2"):
        trainer.train()
    assert opt.step_count == 1


def test_other_optimizers_train_as_under_trainer(tmp_path):
    model = make_model()
    reference = copy.deepcopy(model)
    train(model, lambda params: torch.optim.AdamW(params, lr=1e-2), tmp_path, 1)
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    reference.train()
    for batch in batches():
        reference(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    assert_same_weights(model, reference)


def test_a_plain_trainer_is_told_which_adapter_to_use(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=BATCH,
                                          num_train_epochs=1, use_cpu=True, report_to="none", disable_tqdm=True,
                                          save_strategy="no", logging_strategy="no", max_grad_norm=0.0)
    model = make_model()
    plain = transformers.Trainer(model=model, args=args, train_dataset=dataset(),
                                 optimizers=(zosam(model.parameters()), None))
    with pytest.raises(ValueError, match="SharpnessAwareTrainer"):
        plain.train()


def test_the_trainer_built_optimizer_takes_the_arguments_weight_decay(tmp_path):
    """optimizer_cls_and_kwargs: the Trainer builds the member over its own param groups
    (args.weight_decay on the weights, 0 on biases and norms); the weights equal our
    loop over the same groups, and weight_decay changes them."""
    def run(weight_decay):
        model = make_model()
        reference = copy.deepcopy(model)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / str(weight_decay)), per_device_train_batch_size=BATCH, num_train_epochs=1,
            use_cpu=True, train_sampling_strategy="sequential", report_to="none", disable_tqdm=True,
            max_grad_norm=0.0, save_strategy="no", logging_strategy="no", lr_scheduler_type="constant",
            weight_decay=weight_decay)
        trainer = SharpnessAwareTrainer(model=model, args=args, train_dataset=dataset(), optimizer_cls_and_kwargs=(
            zk.ZOSAM, dict(base_optimizer=torch.optim.AdamW, rho=0.05, n_dirs=2, lr=1e-2)))
        decay = set(trainer.get_decay_parameter_names(model))
        trainer.train()
        named = list(reference.named_parameters())
        groups = [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
                  {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
        plain_loop(reference, lambda params: zosam(groups), 1)
        assert_same_weights(model, reference)
        return model
    without, with_decay = run(0.0), run(0.5)
    assert (without.classifier.weight - with_decay.classifier.weight).abs().max() > 1e-4
