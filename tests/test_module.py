"""DynamicsModule: training step, logging (read back from a real TensorBoard event file), subclass hooks,
rollouts, prediction files, optimiser/scheduler, EMA teacher, gradient norm and validation metrics."""

from __future__ import annotations

import inspect
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dreamer_dynamics.errors import ConfigError
from dreamer_dynamics.model import DynamicsConfig, RolloutConfig, rollout
from dreamer_dynamics.module import DynamicsModule
from dreamer_dynamics.objective import ShortcutForcingLoss
from dreamer_dynamics.training import (
    EMA,
    LatentThroughputMonitor,
    MuonAdamW,
    RolloutImageLogger,
    RolloutWriter,
    ValidationMetrics,
    WarmupCosineLR,
    total_grad_norm,
)
from dreamer_dynamics.training.config import EvaluationConfig, ObjectiveConfig
from tests.conftest import tiny_datamodule, tiny_module


def make_trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_steps=3,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=3,
        default_root_dir=str(tmp_path),
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
    )
    return pl.Trainer(**{**defaults, **kwargs})


def read_events(trainer: pl.Trainer) -> EventAccumulator:
    trainer.logger.experiment.flush()
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def last_scalar(events: EventAccumulator, tag: str) -> float:
    return events.Scalars(tag)[-1].value


def test_fit_logs_terms_rms_total_and_validation_to_tensorboard(tmp_path, cache):
    data = tiny_datamodule(cache=cache)
    module = tiny_module(data)
    trainer = make_trainer(
        tmp_path, callbacks=[LatentThroughputMonitor(), RolloutImageLogger(max_sequences=2)]
    )
    trainer.fit(module, data)
    events = read_events(trainer)
    scalars = set(events.Tags()["scalars"])
    expected = {
        "train/loss",
        "train/loss_unnormalized",
        "train/lr_adamw",
        "train/grad_norm",
        "train/latent_tokens_per_s",
        "val/loss",
        "val/bootstrap_loss",
        "val/rollout_es_copy_last",
        "val/rollout_es_context_mean",
        "val/oracle_es",  # the built-in world has an oracle
        "val/oracle_mean_es",
    }
    expected |= {"train/flow", "train/bootstrap", "train/shortcut", "train/shortcut_rms"}
    expected |= {f"val/flow_loss_tau{lo:.2f}_{lo + 0.25:.2f}" for lo in (0.0, 0.25, 0.5, 0.75)}
    for k in (1, 2, 4, 8):  # K in {1, 2, 4, K_max = 8}
        expected |= {f"val/rollout_{name}_k{k}" for name in ("es", "es_ratio", "spread", "mean_mse", "mse")}
        expected.add(f"val/object_accuracy_k{k}")  # the built-in world defines its objects
        expected.add(f"val/rollout_excess_k{k}")
    assert expected <= scalars, expected - scalars
    assert last_scalar(events, "val/oracle_es") < 1e-4  # the deterministic world: the oracle is exact
    assert last_scalar(events, "val/rollout_excess_k1") == pytest.approx(
        last_scalar(events, "val/rollout_es_ratio_k1"), rel=1e-3
    )
    assert "train/lr_muon" not in scalars  # AdamW only
    assert len(events.Scalars("train/loss")) == 3  # every step
    # The shortcut loss is flow + bootstrap (docs/design.md §3.6), normalised as one term by its running RMS.
    shortcut = last_scalar(events, "train/shortcut")
    assert math.isclose(
        shortcut, last_scalar(events, "train/flow") + last_scalar(events, "train/bootstrap"), rel_tol=1e-5
    )
    assert math.isclose(
        last_scalar(events, "train/loss"), shortcut / last_scalar(events, "train/shortcut_rms"), rel_tol=1e-4
    )
    # One labelled picture per context and validation, at the step of the validation's scalars, decoded by the
    # built-in dataset's decoder: rows context, truth, K = 1, 4, K_max = 8; a label column, then 3 frames.
    assert {"val/rollout_0", "val/rollout_1"} <= set(events.Tags()["images"])
    images = events.Images("val/rollout_0")
    assert [image.step for image in images] == [s.step for s in events.Scalars("val/loss")] == [2]
    patch = data.decoder.codec.image_size
    assert (images[0].height, images[0].width) == (5 * max(patch, 12), 56 + 3 * patch)


class FlowOnlyWithMeanPenalty(DynamicsModule):
    """Changes the noise sampling (every frame at d_min, tau = 1/2) and adds a named loss term."""

    extra_loss_names = ("mean_penalty",)

    def sample_signal_and_step(self, batch, generator=None):
        b, t = batch["latents"].shape[:2]
        self.noise_calls = getattr(self, "noise_calls", 0) + 1
        return torch.full((b, t), 0.5, device=self.device), torch.full((b, t), self.d_min, device=self.device)

    def extra_loss_terms(self, batch, output: ShortcutForcingLoss):
        self.seen_bootstrap = bool(output.bootstrap.any())
        return {"mean_penalty": output.x1_hat.mean().square()}


def test_subclass_changes_noise_sampling_and_adds_a_loss_term(tmp_path, cache):
    data = tiny_datamodule(cache=cache)
    module = tiny_module(data, cls=FlowOnlyWithMeanPenalty, objective={"image_row_share": 0.0})
    assert "mean_penalty" in module.loss_normalizer.names()  # RMS buffer exists before EMA/FSDP wrap
    trainer = make_trainer(tmp_path, val_check_interval=None, limit_val_batches=0)
    trainer.fit(module, data)
    events = read_events(trainer)
    assert module.noise_calls == 3 and module.seen_bootstrap is False
    assert all(e.value == 0.0 for e in events.Scalars("train/bootstrap"))  # no frame above d_min
    assert last_scalar(events, "train/mean_penalty_rms") > 0
    normalized = sum(
        last_scalar(events, f"train/{t}") / last_scalar(events, f"train/{t}_rms")
        for t in ("shortcut", "mean_penalty")
    )
    assert math.isclose(last_scalar(events, "train/loss"), normalized, rel_tol=1e-4)


def test_flow_and_bootstrap_can_be_normalised_separately(tmp_path, cache):
    data = tiny_datamodule(cache=cache)
    module = tiny_module(data, objective={"normalize_shortcut_terms_separately": True})
    assert set(module.loss_normalizer.names()) == {"flow", "bootstrap"}
    trainer = make_trainer(tmp_path, val_check_interval=None, limit_val_batches=0)
    trainer.fit(module, data)
    events = read_events(trainer)
    total = sum(
        last_scalar(events, f"train/{t}") / last_scalar(events, f"train/{t}_rms")
        for t in ("flow", "bootstrap")
    )
    assert math.isclose(last_scalar(events, "train/loss"), total, rel_tol=1e-4)


def test_extra_term_may_not_shadow_a_core_term(tmp_path, cache):
    class Shadowing(DynamicsModule):
        def extra_loss_terms(self, batch, output):
            return {"flow": output.loss}

    data = tiny_datamodule(cache=cache)
    with pytest.raises(ValueError, match="already exist.*flow"):
        make_trainer(tmp_path, logger=False).fit(tiny_module(data, cls=Shadowing), data)


def test_rollout_shapes_determinism_and_action_coverage(cache):
    data = tiny_datamodule(cache=cache)
    module = tiny_module(data).eval()
    batch = next(iter(data.val_dataloader()))
    context, actions = batch["latents"][:, :2], batch["actions_discrete"][:, :5]
    runs = [
        module.model.rollout(context, 3, actions_discrete=actions, generator=torch.Generator().manual_seed(1))
        for _ in range(2)
    ]
    assert runs[0].shape == (4, 3, data.latent_tokens, data.latent_dim)
    assert torch.equal(runs[0], runs[1])
    with pytest.raises(ValueError, match="cover"):
        module.model.rollout(context, 3, actions_discrete=actions[:, :4])


def test_image_rows_reach_the_network_at_the_configured_share(tmp_path, cache):
    """docs/design.md §3.8: a share of the rows is trained as images; every student and teacher pass gets the
    rows' flags, the teacher passes the flags of the rows they run on."""
    data = tiny_datamodule(cache=cache)
    module = tiny_module(data, objective={"image_row_share": 0.5})
    calls = []
    module.model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((torch.is_grad_enabled(), kwargs.get("image_rows"))),
        with_kwargs=True,
    )
    make_trainer(tmp_path, logger=False, max_steps=8, limit_val_batches=0).fit(module, data)
    assert all(rows is not None and rows.dtype == torch.bool for _, rows in calls)
    student = torch.cat([rows for grad, rows in calls if grad])  # one student pass per step, every row
    assert student.numel() == 8 * 4 - 2 * 2  # 8 steps of 4 rows, two of them long batches of 2 rows
    assert 0.2 < student.float().mean() < 0.8  # about half of the rows are images, the rest videos
    none = tiny_module(data, objective={"image_row_share": 0.0})
    assert not none.sample_image_rows({"latents": torch.zeros(64, 6, 1, 1)}).any()
    every = tiny_module(data, objective={"image_row_share": 1.0})
    assert every.sample_image_rows({"latents": torch.zeros(64, 6, 1, 1)}).all()


def test_predict_writes_weights_only_loadable_files(tmp_path, cache):
    data = tiny_datamodule(cache=cache)
    module = tiny_module(data)
    writer = RolloutWriter(output_dir=str(tmp_path / "pred"), format="pt", pictures=False)
    make_trainer(tmp_path, logger=False, callbacks=[writer]).predict(
        module, datamodule=data, return_predictions=False
    )
    files = sorted(p for p in (tmp_path / "pred").iterdir() if p.is_file())
    assert [f.name for f in files] == ["rollouts_rank0_batch000000.pt"]  # no temporary files left behind
    out = torch.load(files[0], weights_only=True)
    assert out["rollout"].shape == (4, 4, data.latent_tokens, data.latent_dim)  # predict_length 6 - 2 context
    assert out["ground_truth"].shape == out["rollout"].shape
    assert out["context"].shape[1] == 2 and out["actions_discrete"].shape[1] == 6
    # Alignment: the windows themselves, split at the context length; the rollout continues that context under
    # those actions (same per-batch generator as predict_step).
    # Batches are standardised; the files hold the dataset's own units.
    batch = next(iter(data.predict_dataloader()))
    assert torch.equal(out["context"], module.model.latent_units.destandardize(batch["latents"][:, :2]))
    assert torch.equal(out["ground_truth"], module.model.latent_units.destandardize(batch["latents"][:, 2:6]))
    assert torch.equal(out["actions_discrete"], batch["actions_discrete"][:, :6])
    expected = rollout(  # model units, the module's K and context noise
        module.model,
        batch["latents"][:, :2],
        4,
        actions_discrete=batch["actions_discrete"][:, :6],
        num_steps=module.hparams.rollout.num_steps,
        context_noise=module.hparams.rollout.context_noise,
        generator=module.evaluation_generator(0),
    )
    assert torch.equal(out["rollout"], module.model.latent_units.destandardize(expected))


def test_optimizer_groups_and_warmup_cosine_schedule(tmp_path, cache):
    data = tiny_datamodule(cache=cache)
    module = tiny_module(data, scheduler=lambda opt: WarmupCosineLR(opt, warmup_steps=10, min_lr_ratio=0.1))
    trainer = make_trainer(tmp_path, max_steps=2, logger=False, limit_val_batches=0)
    trainer.fit(module, data)
    hidden, decayed, undecayed = trainer.optimizers[0].param_groups  # the flag is ignored by AdamW
    assert hidden["hidden_matrix"] and not decayed["hidden_matrix"] and not undecayed["hidden_matrix"]
    assert hidden["weight_decay"] == decayed["weight_decay"] == 0.01 and undecayed["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in hidden["params"] + decayed["params"])
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    assert embeddings and embeddings <= {id(p) for p in undecayed["params"]}
    assert (
        trainer.lr_scheduler_configs[0].scheduler.total_steps == 2
    )  # filled in from the Trainer's max_steps

    scheduler = WarmupCosineLR(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
        warmup_steps=10,
        total_steps=110,
        min_lr_ratio=0.1,
    )
    assert scheduler.lr_factor(0) == pytest.approx(1 / 11) and scheduler.lr_factor(10) == pytest.approx(1.0)
    assert scheduler.lr_factor(60) == pytest.approx(0.55)  # half way down the cosine: (1 + 0.1) / 2
    assert scheduler.lr_factor(110) == pytest.approx(0.1) and scheduler.lr_factor(500) == pytest.approx(0.1)
    assert all(isinstance(v, (int, float, list, bool, type(None))) for v in scheduler.state_dict().values())


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_muon_and_adamw_rates_are_logged_apart(tmp_path, cache):
    data = tiny_datamodule(cache=cache)
    optimizer = lambda groups: MuonAdamW(groups, lr=1e-3, muon_lr=0.02)  # noqa: E731
    scheduler = lambda opt: WarmupCosineLR(opt, warmup_steps=0)  # noqa: E731
    module = tiny_module(data, optimizer=optimizer, scheduler=scheduler)
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, data)
    events = read_events(trainer)
    assert last_scalar(events, "train/lr_muon") == pytest.approx(0.02)
    assert last_scalar(events, "train/lr_adamw") == pytest.approx(1e-3)


def count_calls(model: torch.nn.Module, calls: list) -> None:
    """A forward hook that appends to `calls` once per call (register after EMA's deep copy, which copies
    hooks)."""
    model.register_forward_hook(lambda *_: calls.append(1))


def test_ema_teacher_gives_the_targets_once_averaging_started(tmp_path, cache):
    """Steps before the EMA's first update take bootstrap targets from the online network (the average still
    holds the initial weights); later steps call the EMA network for both teacher passes, and the student only
    runs on the online one."""
    data = tiny_datamodule(cache=cache)
    with pytest.raises(RuntimeError, match="EMA callback"):
        make_trainer(tmp_path, logger=False).fit(tiny_module(data, objective={"ema_teacher": True}), data)
    module = tiny_module(data, objective={"ema_teacher": True, "image_row_share": 0.0})
    ema = EMA(decay=0.5, update_starting_at_step=2)  # updates after steps 3 and 4 (zero-based index 2, 3)
    online_calls, ema_calls, per_step = [], [], []

    class Spy(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            count_calls(module.model, online_calls)
            count_calls(ema.averaged_model.module.model, ema_calls)

        def on_train_batch_end(self, trainer, pl_module, *args):
            per_step.append((len(online_calls), len(ema_calls), ema.started))
            online_calls.clear(), ema_calls.clear()

    trainer = make_trainer(tmp_path, logger=False, max_steps=4, limit_val_batches=0, callbacks=[ema, Spy()])
    trainer.fit(module, data)
    # (online forwards, EMA forwards, averaging started after the step); every step has bootstrap frames
    assert per_step == [(3, 0, False), (3, 0, False), (3, 0, True), (1, 2, True)]
    teacher = module.teacher_model()
    assert teacher is ema.averaged_model.module.model and teacher is not module.model


def test_total_grad_norm_matches_the_concatenated_gradient():
    layer = torch.nn.Linear(3, 2)
    layer.weight.grad = torch.full((2, 3), 2.0)
    layer.bias.grad = torch.tensor([3.0, 4.0])
    assert total_grad_norm(layer).item() == pytest.approx(math.sqrt(6 * 4 + 9 + 16))


def test_checkpoint_loads_weights_only_and_restores_the_model(tmp_path, cache):
    data = tiny_datamodule(cache=cache)
    module = tiny_module(data)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    make_trainer(tmp_path, logger=False, max_steps=2, limit_val_batches=0, callbacks=[checkpoint]).fit(
        module, data
    )
    path = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(path, weights_only=True)
    for group in ("model", "objective", "evaluation", "rollout"):  # plain dicts: weights-only loadable
        assert isinstance(state["hyper_parameters"][group], dict), group
    assert "references" not in state["hyper_parameters"]  # describes the data, not the model
    assert "loss_normalizer.mean_square_shortcut" in state["state_dict"]
    loaded = DynamicsModule.load_from_checkpoint(path, weights_only=True)
    assert loaded.config == module.config and loaded.objective == module.objective
    assert loaded.evaluator.config == module.evaluator.config
    for (name, a), b in zip(module.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # evaluation settings change with one key; the rest comes from the checkpoint
    evaluation = EvaluationConfig(context_frames=2, rollout_samples=8)
    loaded = DynamicsModule.load_from_checkpoint(path, evaluation=evaluation, references=data.references)
    assert loaded.evaluator.config == evaluation and loaded.evaluator.references == data.references
    assert loaded.objective == module.objective
    assert loaded.model.rollout_defaults == module.model.rollout_defaults


def test_validation_metrics_bucket_by_signal_level_and_baselines():
    metrics = ValidationMetrics([1, 4], num_tau_buckets=4)
    per_frame = torch.tensor([[1.0, 2.0, 3.0, 4.0, 6.0]])
    tau = torch.tensor([[0.0, 0.3, 0.6, 0.9, 0.95]])  # tau = 0 pure noise, tau -> 1 clean
    metrics.update_flow_buckets(per_frame, tau)
    metrics.update_losses(torch.tensor(0.5), per_frame, torch.tensor([[True, False, True, False, False]]))
    context = torch.zeros(1, 2, 1, 1)
    target = torch.tensor([1.0, 3.0]).reshape(1, 2, 1, 1)
    context[:, 0] = 2.0  # context frames 2, 0: copy-last predicts 0, the context mean predicts 1
    metrics.rollout.update(context, target, {})
    values = {k: v.compute().item() for k, v in metrics.as_dict().items()}
    assert values["val/flow_loss_tau0.00_0.25"] == 1.0 and values["val/flow_loss_tau0.75_1.00"] == 5.0
    assert values["val/bootstrap_loss"] == 2.0 and values["val/loss"] == 0.5
    scores = metrics.rollout.compute()
    assert scores["es_copy_last"].item() == 2.0  # (|1 - 0| + |3 - 0|) / 2
    assert scores["es_context_mean"].item() == 1.0  # (|1 - 1| + |3 - 1|) / 2
    assert "es_k1" not in scores  # no rollouts with K = 1: not logged


def test_progress_bar_shows_the_unnormalised_loss_and_checkpoints_load_in_eval_mode(tmp_path, cache):
    """The normalised loss is ~1 by design (running-RMS division), so the bar shows the raw one."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = tiny_datamodule(cache=cache)
    module = tiny_module(data)
    trainer = make_trainer(
        tmp_path,
        max_steps=2,
        logger=False,
        limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )
    trainer.fit(module, data)
    shown, raw = trainer.progress_bar_metrics["loss"], trainer.callback_metrics["train/loss_unnormalized"]
    assert shown == pytest.approx(float(raw)) and shown != pytest.approx(
        float(trainer.callback_metrics["train/loss"])
    )
    loaded = DynamicsModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", map_location="cpu")
    assert not loaded.training and not any(m.training for m in loaded.modules())


class RecordsItsSchedule(DynamicsModule):
    """A subclass whose schedule puts every frame at tau = 1/2, d = d_min, and records who asked for it."""

    def sample_signal_and_step(self, batch, generator=None):
        self.schedule_calls = [*getattr(self, "schedule_calls", []), (self.training, generator is not None)]
        b, t = batch["latents"].shape[:2]
        return torch.full((b, t), 0.5, device=self.device), torch.full((b, t), self.d_min, device=self.device)

    def sample_noise(self, batch, generator=None):
        self.noise_calls = [*getattr(self, "noise_calls", []), (self.training, generator is not None)]
        return super().sample_noise(batch, generator)


def test_validation_draws_levels_and_noise_through_the_module_hooks(tmp_path, cache):
    """A subclass whose schedule puts every frame at tau = 1/2, d = d_min, and records who called it."""
    data = tiny_datamodule(cache=cache)
    module = tiny_module(data, cls=RecordsItsSchedule, evaluation={"rollout_batches": 0})
    trainer = make_trainer(tmp_path, logger=False, enable_checkpointing=False)
    state = module.noise_generator.get_state()
    trainer.validate(module, datamodule=data, verbose=False)
    assert module.schedule_calls and all(call == (False, True) for call in module.schedule_calls)
    assert module.noise_calls and all(call == (False, True) for call in module.noise_calls)
    assert torch.equal(module.noise_generator.get_state(), state)  # validating never advances training noise
    # the schedule puts every frame at d_min: no bootstrap frame, so the objective is the flow term alone
    metrics = trainer.callback_metrics
    assert float(metrics["val/loss"]) > 0 and math.isnan(float(metrics.get("val/bootstrap_loss", math.nan)))


class RecordsItsLoss(RecordsItsSchedule):
    """Every frame at tau = 1/2 (flow frames); keeps the objective's output of each training step."""

    def extra_loss_terms(self, batch, output):
        self.outputs = [*getattr(self, "outputs", []), output]
        return {}


def test_loss_weighting_reaches_training_and_validation(tmp_path, cache):
    """``loss_weighting`` picks w(tau) for the training and the validation objective: at tau = 1/2 the ramp
    (Eq. 8) weighs a frame 0.55, the uniform weighting 1 — same weights, same noise, same per-frame losses."""
    data = tiny_datamodule(cache=cache)
    with pytest.raises(ConfigError, match="loss_weighting must be one of"):
        tiny_module(data, objective={"loss_weighting": "cosine"})
    val_loss = {}
    for weighting in ("ramp", "uniform"):
        torch.manual_seed(0)
        module = tiny_module(
            data,
            cls=RecordsItsLoss,
            evaluation={"rollout_batches": 0},
            objective={"loss_weighting": weighting},
        )
        trainer = make_trainer(tmp_path / weighting, logger=False, enable_checkpointing=False)
        trainer.validate(module, datamodule=data, verbose=False)
        val_loss[weighting] = float(trainer.callback_metrics["val/loss"])
        trainer = make_trainer(tmp_path / weighting, logger=False, enable_checkpointing=False, max_steps=1)
        trainer.fit(module, datamodule=data)
        (out,) = module.outputs
        weight = 0.55 if weighting == "ramp" else 1.0
        torch.testing.assert_close(out.loss, weight * out.per_frame.mean())
    assert val_loss["ramp"] == pytest.approx(0.55 * val_loss["uniform"], rel=1e-5)


def test_context_prefix_frames_reach_training_and_validation(tmp_path, cache):
    """``context_prefix_frames = 2``: in every student pass of training and of validation the first two frames
    carry the rollout context's labels (tau_ctx = 7/8 for k_max = 8, d_min), the later ones drawn levels."""
    data = tiny_datamodule(cache=cache)
    with pytest.raises(ConfigError, match="context_prefix_frames must be >= 0"):
        tiny_module(data, objective={"context_prefix_frames": -1})
    # d_min everywhere: flow frames only, so every network call below is a student pass (no teacher)
    module = tiny_module(
        data, objective={"context_prefix_frames": 2, "d_min_share": 1.0}, evaluation={"rollout_batches": 0}
    )
    calls = []
    module.model.register_forward_pre_hook(
        lambda m, args: calls.append((torch.is_grad_enabled(), *args[1:3]))
    )
    trainer = make_trainer(tmp_path, logger=False, enable_checkpointing=False, max_steps=3)
    trainer.fit(module, datamodule=data)
    # 3 training steps, then validation: the objective, then the flow loss at every tau (bucketed, no prefix)
    assert [grad for grad, _, _ in calls] == [True, True, True, False, False]
    for _, tau, d in calls[:4]:
        assert (tau[:, :2] == 0.875).all() and (d == 1 / 8).all()
    later = torch.cat([tau[:, 2:].flatten() for _, tau, _ in calls[:4]])
    assert (later != 0.875).float().mean() > 0.5  # drawn over {0, 1/8, ..., 7/8}


def test_bootstrap_warmup_trains_the_flow_term_alone_then_bootstrap_frames_appear(tmp_path, cache):
    """``bootstrap_warmup_steps = 2``: in the student passes of steps 0 and 1 every frame is at d_min (flow
    only, no teacher call); from step 2 on, drawn step sizes above d_min (bootstrap frames) appear."""
    data = tiny_datamodule(cache=cache)
    module = tiny_module(data, objective={"bootstrap_warmup_steps": 2})
    calls = []  # (global step, grad enabled, d) of every network call
    module.model.register_forward_pre_hook(
        lambda m, args: calls.append((module.global_step, torch.is_grad_enabled(), args[2].clone()))
    )
    trainer = make_trainer(
        tmp_path, logger=False, enable_checkpointing=False, max_steps=4, limit_val_batches=0
    )
    trainer.fit(module, datamodule=data)
    d_min = module.d_min
    for step in (0, 1):
        passes = [(grad, d) for s, grad, d in calls if s == step]
        assert [grad for grad, _ in passes] == [True], "a warm-up step calls the teacher"
        assert (passes[0][1] == d_min).all()
    later = torch.cat([d.flatten() for s, grad, d in calls if s >= 2 and grad])
    assert (later > d_min).float().mean() > 0.3  # uniform over K = 1..8: 7/8 of frames above d_min
    assert any(not grad for s, grad, _ in calls if s >= 2)  # bootstrap frames ask the teacher


def test_throughput_is_logged_when_every_epoch_is_one_batch(tmp_path, cache):
    """``steps_per_epoch = 1``: every batch starts an epoch; the rate is still logged from the second step on
    (measured across epoch boundaries, validation time left out)."""
    data = tiny_datamodule(cache=cache, steps_per_epoch=1)
    module = tiny_module(data, evaluation={"rollout_batches": 0})
    trainer = make_trainer(
        tmp_path,
        max_steps=4,
        val_check_interval=None,
        check_val_every_n_epoch=2,
        enable_checkpointing=False,
        callbacks=[LatentThroughputMonitor()],
    )
    trainer.fit(module, data)
    assert trainer.current_epoch == 4  # one batch per epoch
    rates = read_events(trainer).Scalars("train/latent_tokens_per_s")
    assert [r.step for r in rates] == [1, 2, 3] and all(r.value > 0 for r in rates)


def test_settings_come_in_groups_that_refuse_bad_values_in_one_line():
    """``DynamicsModule`` takes at most 12 arguments: the rest live in groups, each refusing a value out of
    range with one line naming the group and field; a checkpoint's plain dicts rebuild the same groups."""
    assert len(inspect.signature(DynamicsModule.__init__).parameters) - 1 <= 12
    bad = [
        (ObjectiveConfig, {"image_row_share": 1.5}, "objective.image_row_share must be in"),
        (ObjectiveConfig, {"bootstrap_row_share": -0.1}, "objective.bootstrap_row_share must be in"),
        (ObjectiveConfig, {"bootstrap_warmup_steps": -1}, "objective.bootstrap_warmup_steps must be >= 0"),
        (EvaluationConfig, {"rollout_samples": 1}, "evaluation.rollout_samples must be >= 2"),
        (EvaluationConfig, {"context_frames": 0}, "evaluation.context_frames must be >= 1"),
        (RolloutConfig, {"num_steps": 3}, "rollout.num_steps must be a power of two"),
        (RolloutConfig, {"context_noise": 1.5}, "rollout.context_noise must be in"),
    ]
    for cls, kwargs, message in bad:
        with pytest.raises(ConfigError, match=message) as error:
            cls(**kwargs)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"DynamicsModule: evaluation: unknown keys \['samples'\]"):
        DynamicsModule(DynamicsConfig.debug(), evaluation={"samples": 8})
    module = DynamicsModule(DynamicsConfig.debug(), objective={"d_min_share": 0.5}, rollout={"num_steps": 2})
    assert (
        module.objective == ObjectiveConfig(d_min_share=0.5) and module.model.rollout_defaults.num_steps == 2
    )


def test_evaluation_uses_only_the_references_it_is_given(tmp_path, cache):
    """The object locator and the oracle reach evaluation as an argument: the same module and data score them
    with ``references`` and leave them out without, however the DataModule is attached."""
    data = tiny_datamodule(cache=cache, world="stochastic")
    figures = {}
    for name, references in (("without", None), ("with", data.references)):
        torch.manual_seed(0)
        module = tiny_module(data, references=references)
        trainer = make_trainer(tmp_path / name, logger=False, enable_checkpointing=False)
        trainer.validate(module, datamodule=data, verbose=False)
        figures[name] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    scored = {"val/oracle_es", "val/oracle_mean_es", "val/rollout_excess_k1", "val/object_accuracy_k1"}
    assert scored <= figures["with"].keys() and not scored & figures["without"].keys()
    shared = figures["without"].keys()
    assert {k: figures["with"][k] for k in shared} == figures["without"]  # the rest: the same figures
