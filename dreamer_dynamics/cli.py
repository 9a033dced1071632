"""Console script ``dreamer-dynamics``: LightningCLI with ``fit``, ``validate``, ``test`` and ``predict``.

    dreamer-dynamics fit --config quickstart                          # packaged config, by name
    dreamer-dynamics fit --config quickstart --data.root /path/to/latents
    dreamer-dynamics fit --config quickstart --ckpt_path last         # resume the newest checkpoint
    dreamer-dynamics validate --ckpt_path runs/.../last.ckpt          # model AND data from the checkpoint
    dreamer-dynamics predict --ckpt_path C --data.predict_context c.npz --model.evaluation.predict_horizon=4
    dreamer-dynamics fit --config quickstart --print_config
    dreamer-dynamics export runs/.../last.ckpt exported/          # config JSON + safetensors (export.py)
    dreamer-dynamics play runs/.../last.ckpt                       # steer it from a browser page (play/)

* ``--config NAME`` finds a packaged config (``dreamer_dynamics/configs/NAME.yaml``; the repository's
  ``lightning_configs/`` links to the same files); any existing path is used as given.
* The model's latent shape and action spec are *linked* from the DataModule, so ``--data.root`` alone switches
  datasets (the linked keys ``model.model.latent_tokens`` etc. are not settable); so are the latent units the
  batches are standardised with (``data.latent_units`` -> ``model.latent_units``, the identity with
  ``--data.standardize false``) and the object locator and oracle its description names (``data.references``
  -> ``model.references``).
* With ``--ckpt_path``, the model's hyper-parameters come from the checkpoint (Lightning; the fields of the
  evaluation-only groups ``model.evaluation`` and ``model.rollout`` that this command line sets keep its
  values), and so does the dataset unless ``--data.root`` is given: its root and the DataModule settings this
  command line leaves at their defaults.
  A dataset the network does not fit is refused with one line before anything is built (checkpoints.py).
  ``--ckpt_path last`` is the newest ``*.ckpt`` under
  ``trainer.default_root_dir``; ``fit`` then continues in the checkpoint's log version, or starts fresh when
  there is none yet (so one command serves every run of a requeued job).
* Every output goes under ``trainer.default_root_dir``: loggers without a ``save_dir`` get it, checkpoints go
  to the logger's version folder, ``RolloutWriter`` without ``output_dir`` writes ``<root>/predictions``.
* One optimiser setting: ``model.optimizer`` / ``model.scheduler`` (LightningCLI's automatic ``--optimizer``
  and ``--lr_scheduler``, which would bypass the module's parameter groups and schedule, are disabled).
* Dataset and configuration errors, unknown keys (with the closest valid ones), bad values and Lightning's
  own configuration errors print one line and exit 1; ``DREAMER_DYNAMICS_TRACEBACK=1`` shows the full
  traceback. Checkpoints are loaded with weights-only unpickling (``--weights_only true`` is the default).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import BasePredictionWriter, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from dreamer_dynamics.checkpoints import (
    check_spec,
    find_last_checkpoint,
    log_version_of,
    read_checkpoint_info,
    run_dir_of,
)
from dreamer_dynamics.configs import resolve_config_args
from dreamer_dynamics.data import DynamicsDataModule
from dreamer_dynamics.data.reading.fingerprint import dataset_fingerprint, is_other_dataset
from dreamer_dynamics.data.reading.format import METADATA_FILE, DatasetError
from dreamer_dynamics.errors import (
    TRACEBACK_ENV,
    ConfigError,
    MissingExtraError,
    NonFiniteLossError,
    argument_error_line,
    show_traceback,
)
from dreamer_dynamics.model import RolloutConfig
from dreamer_dynamics.module import DynamicsModule
from dreamer_dynamics.quiet import quiet_known_messages, quiet_weight_averaging_warning
from dreamer_dynamics.training.config import EvaluationConfig
from dreamer_dynamics.training.interrupt import AtomicCheckpointIO, StopOnSignal
from dreamer_dynamics.training.prediction import RolloutWriter
from dreamer_dynamics.training.progress import FitSummary, OneLineModelSummary, StepProgressBar

DESCRIPTION = (
    "Train and evaluate the dynamics model of a DreamerV4-style world model on latent datasets "
    "(fit, validate, test, predict; --config quickstart runs the built-in world), and export a checkpoint "
    "for inference without Lightning (export)."
)
EXPORT_USAGE = (
    "dreamer-dynamics export CKPT DIR [--weights ema|online]: a checkpoint -> config.json + "
    "model.safetensors for DynamicsTransformer.from_pretrained (dreamer-dynamics export --help)"
)
# DataModule property -> DynamicsConfig field (model.model.<field>)
LINKED_DATA_FIELDS = (
    "latent_tokens",
    "latent_dim",
    "num_discrete_actions",
    "num_continuous_actions",
    "token_grid",
)
OTHER_DATASET_FLAG = "resume_other_dataset"  # fit: continue a checkpoint on another dataset
# printed as one line, exit 1
USER_ERRORS = (DatasetError, ConfigError, MissingExtraError, MisconfigurationException, NonFiniteLossError)
LIGHTNING_CKPT_NAMES = ("best", "hpc", "registry")  # resolved by Lightning itself
# DynamicsModule setting groups that change evaluation only, never the weights: with --ckpt_path, Lightning
# replaces the whole model config by the checkpoint's hyper-parameters; the fields of these groups that this
# command line sets keep its values.
EVALUATION_GROUPS = {"evaluation": EvaluationConfig, "rollout": RolloutConfig}

# DataModule settings that describe this machine or this run's input, never adopted from a checkpoint
NOT_ADOPTED = ("root", "toy", "world", "cache_dir", "num_workers", "pin_memory", "predict_context")


def signature_defaults(cls: type) -> dict[str, Any]:
    """{argument: default} of ``cls.__init__`` (arguments without a default are left out)."""
    return {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def evaluation_settings(model: Any) -> dict[str, Any]:
    """{"evaluation.rollout_samples": 8, ...}: the fields of ``EVALUATION_GROUPS`` this command line (or its
    config) sets to other values than the field defaults."""
    settings = {}
    for group, cls in EVALUATION_GROUPS.items():
        values = model.get(group) if isinstance(model, Namespace) else None
        if not isinstance(values, Namespace):
            continue
        defaults = cls()
        for field in dataclasses.fields(cls):
            value = values.get(field.name, getattr(defaults, field.name))
            if value != getattr(defaults, field.name):
                settings[f"{group}.{field.name}"] = value
    return settings


class WeightsOnlyParser(LightningArgumentParser):
    """Subcommand parser whose ``weights_only`` (of ``Trainer.fit/validate/test/predict``) defaults to True.

    Safe default: checkpoints hold only tensors and plain containers (``DynamicsModule.on_save_checkpoint``).
    Set through LightningCLI's public ``parser_class``; the subcommand's method arguments are added here.
    """

    def add_method_arguments(self, *args: Any, **kwargs: Any) -> list[str]:
        added = super().add_method_arguments(*args, **kwargs)
        if "weights_only" in added:
            self.set_defaults(weights_only=True)
        return added

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Where the parser would print its usage and exit: a ConfigError of one line instead (``main``
        prints it), an unknown key with the closest valid keys."""
        if not self.exit_on_error:  # jsonargparse's internal parsers: it catches and rephrases these
            super().error(message, ex)
        raise ConfigError(argument_error_line(message, parser_keys(self))) from ex


def parser_keys(parser: Any) -> set[str]:
    """Every key the parser and its subcommand parsers accept (``model.model.dim``, ``trainer.max_steps``)."""
    keys = set()
    for action in parser._actions:
        if isinstance(getattr(action, "choices", None), dict):  # subcommands: name -> parser
            for sub in action.choices.values():
                keys |= parser_keys(sub)
        elif action.option_strings and action.dest not in ("help", "config", "print_config"):
            if not action.dest.endswith(".help"):  # --model.optimizer.help CLASS prints a class's options
                keys.add(action.dest)
    return keys


def check_trainer_limits(trainer: Any) -> None:
    """``trainer.max_steps`` must allow a step: a positive count, or -1 (no limit)."""
    steps = trainer.get("max_steps") if isinstance(trainer, Namespace) else None
    if steps is not None and steps != -1 and steps < 1:
        raise ConfigError(
            f"trainer.max_steps {steps}: fit needs at least one step (a positive count, or -1 for no limit)"
        )


class DynamicsCLI(LightningCLI):
    """LightningCLI with the data -> model links, checkpoint/data reconciliation, outputs under
    ``default_root_dir``, a step progress bar and weights-only checkpoint loading (see the module doc).

    Use it with a subclass of ``DynamicsModule`` from your own script: ``DynamicsCLI(MyModule)``.
    """

    def __init__(
        self, model_class: Any = DynamicsModule, datamodule_class: Any = DynamicsDataModule, **kwargs: Any
    ) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", WeightsOnlyParser)
        kwargs.setdefault("auto_configure_optimizers", False)  # one optimiser setting: model.optimizer
        parser_kwargs = kwargs.setdefault("parser_kwargs", {})
        parser_kwargs.setdefault("description", DESCRIPTION)
        parser_kwargs.setdefault(
            "epilog",
            f"Also: {EXPORT_USAGE}. Set {TRACEBACK_ENV}=1 for full tracebacks of one-line errors.",
        )
        super().__init__(model_class, datamodule_class, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            f"--{OTHER_DATASET_FLAG}",
            type=bool,
            default=False,
            help="fit: resume a checkpoint on another dataset than the one it was trained on",
        )
        for field in LINKED_DATA_FIELDS:
            parser.link_arguments(f"data.{field}", f"model.model.{field}", apply_on="instantiate")
        parser.link_arguments("data.latent_units", "model.latent_units", apply_on="instantiate")
        parser.link_arguments("data.references", "model.references", apply_on="instantiate")

    # ------------------------------------------------------------------ before anything is built
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self.run_dir_from_dataset(self.config[subcommand], sys.argv[1:] if args is None else args)
        if subcommand and self.config[subcommand].get("ckpt_path"):
            self.reconcile_checkpoint(subcommand, self.config[subcommand])
            self._evaluation_settings = evaluation_settings(self.config[subcommand].get("model"))

    @staticmethod
    def run_dir_from_dataset(config: Namespace, args: Any) -> None:
        """``--data.root PATH`` on the command line without ``--trainer.default_root_dir``: the run directory
        is ``runs/<PATH's folder name>``, not the config's, so runs on different datasets stay apart (and
        ``--ckpt_path last`` finds only this dataset's checkpoints)."""
        given = [str(a).split("=", 1)[0] for a in args] if isinstance(args, (list, tuple)) else []
        data, trainer = config.get("data"), config.get("trainer")
        if "--data.root" not in given or "--trainer.default_root_dir" in given:
            return
        if isinstance(data, Namespace) and data.get("root") and isinstance(trainer, Namespace):
            trainer.default_root_dir = str(Path("runs") / Path(str(data.root)).resolve().name)

    def reconcile_checkpoint(self, subcommand: str, config: Namespace) -> None:
        """Resolve ``last``; take the recorded dataset when no ``--data.root`` is given; refuse a dataset the
        checkpoint's network does not fit (ConfigError, one line naming both sides)."""
        ckpt = str(config.ckpt_path)
        if ckpt == "last":
            try:
                ckpt = str(find_last_checkpoint(self.run_dir(config)))
            except ConfigError:
                if subcommand != "fit":
                    raise
                config.ckpt_path = None  # auto-resume: the first run of a job starts fresh
                rank_zero_info(f"--ckpt_path last: no checkpoint under {self.run_dir(config)}; starts fresh")
                return
            config.ckpt_path = ckpt
            rank_zero_info(f"--ckpt_path last: {ckpt}")
        if ckpt in LIGHTNING_CKPT_NAMES:
            return
        if not Path(ckpt).is_file():
            raise ConfigError(f"--ckpt_path {ckpt}: no such checkpoint file")
        info = read_checkpoint_info(ckpt)
        data = config.get("data")
        if not isinstance(data, Namespace) or "root" not in data:
            return  # a DataModule without a root: nothing to reconcile
        recorded = (info["fingerprint"] or {}).get("root")
        if data.root is None and recorded and (Path(recorded) / METADATA_FILE).is_file():
            data.root = recorded
            rank_zero_info(f"data: the checkpoint's dataset {recorded}")
            # and its recorded settings (window lengths, split, ...) where the command line keeps a default
            defaults = signature_defaults(self.datamodule_class or DynamicsDataModule)
            for key, value in (info["data"] or {}).items():
                if key in data and key in defaults and key not in NOT_ADOPTED and data[key] == defaults[key]:
                    data[key] = value
        root = data.root if data.root is not None else self.builtin_root(data)
        fingerprint = dataset_fingerprint(root)
        check_spec(ckpt, info["model"], root, fingerprint)
        if subcommand == "fit" and recorded and not config.get(OTHER_DATASET_FLAG):
            if is_other_dataset(info["fingerprint"], fingerprint):
                raise ConfigError(
                    f"--ckpt_path {ckpt} was trained on {recorded}, not {fingerprint['root']}: resuming "
                    f"would continue that run on other data (pass --{OTHER_DATASET_FLAG} true to do it "
                    "anyway, or --trainer.default_root_dir DIR to start a run of its own)"
                )

    @staticmethod
    def builtin_root(data: Namespace) -> str:
        """Root of the built-in dataset this data config describes (generated and cached if needed)."""
        from dreamer_dynamics.data.building.worlds import builtin_dataset_root, toy_config

        toy = data.get("toy")
        toy = toy_config(
            data.get("world") or "deterministic", toy.as_dict() if isinstance(toy, Namespace) else toy
        )
        return str(builtin_dataset_root(toy, data.get("cache_dir"), progress=True))

    @staticmethod
    def run_dir(config: Namespace) -> str:
        return str(config.trainer.get("default_root_dir") or os.getcwd())

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        for key, value in getattr(self, "_evaluation_settings", {}).items():
            config.model[key] = value  # the command line's, not the checkpoint's (see EVALUATION_GROUPS)
        if self.subcommand == "fit":
            check_trainer_limits(config.get("trainer"))
        if self.subcommand in ("validate", "test", "predict"):
            self.place_evaluation(config)
        self.place_outputs(config, resume=self.subcommand == "fit")

    def place_evaluation(self, config: Namespace) -> None:
        """Evaluating a checkpoint without ``default_root_dir`` writes beside the checkpoint's run;
        ``predict`` keeps no logger (nothing to log) and no config copy: its output is the predictions."""
        trainer = config.get("trainer")
        ckpt = config.get("ckpt_path")
        if not isinstance(trainer, Namespace):
            return
        if trainer.get("default_root_dir") is None and ckpt and Path(str(ckpt)).is_file():
            trainer.default_root_dir = str(run_dir_of(ckpt))
        if self.subcommand == "predict":
            trainer.logger = False
            self.save_config_callback = None

    def place_outputs(self, config: Namespace, *, resume: bool) -> None:
        """Loggers without ``save_dir`` log under ``default_root_dir``; a resumed ``fit`` whose checkpoint
        lies in ``<save_dir>/<name>/version_N`` continues in version N."""
        trainer = config.get("trainer")
        if not isinstance(trainer, Namespace):
            return
        loggers = trainer.get("logger")
        loggers = loggers if isinstance(loggers, list) else [loggers]
        ckpt = config.get("ckpt_path")
        for logger in loggers:
            init = logger.get("init_args") if isinstance(logger, Namespace) else None
            if not isinstance(init, Namespace) or "save_dir" not in init:
                continue
            if init.save_dir is None:
                init.save_dir = self.run_dir(config)
            if resume and ckpt and "version" in init and init.version is None and Path(str(ckpt)).is_file():
                version = log_version_of(Path(str(ckpt)), init.save_dir, init.get("name") or "")
                if version is not None:
                    init.version = version

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config["trainer"]
        callbacks = trainer.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
        if trainer.get("enable_progress_bar") is not False and not has_bar:
            callbacks = [*callbacks, StepProgressBar()]
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks = [*callbacks, RolloutWriter()]  # .npy files and pictures, under default_root_dir
        if trainer.get("enable_model_summary") is not False and not any(
            isinstance(c, ModelSummary) for c in callbacks
        ):
            callbacks = [*callbacks, OneLineModelSummary()]
        if self.subcommand == "fit" and not any(isinstance(c, FitSummary) for c in callbacks):
            callbacks = [*callbacks, FitSummary()]  # final figures, checkpoint, TensorBoard command
        if not any(isinstance(c, StopOnSignal) for c in callbacks):
            callbacks = [*callbacks, StopOnSignal()]  # SIGTERM / Ctrl-C: checkpoint, then stop
        trainer["callbacks"] = callbacks
        plugins = trainer.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            trainer["plugins"] = [*plugins, AtomicCheckpointIO()]  # never a half-written checkpoint
        return super().instantiate_trainer(**kwargs)

    def instantiate_classes(self) -> None:
        """Without ``data.root`` the DataModule reads the built-in world's dataset (``builtin_root``); the
        saved config keeps ``root: null``, so it names the world, not this machine's cache path."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        data = config.get("data")
        if not isinstance(data, Namespace) or "root" not in data or data.root is not None:
            return super().instantiate_classes()
        data.root = self.builtin_root(data)
        try:
            super().instantiate_classes()
        finally:
            data.root = None

    def after_instantiate_classes(self) -> None:
        strategy = type(self.trainer.strategy).__name__ if self.trainer is not None else ""
        if "FSDP" not in strategy and "ModelParallel" not in strategy:
            quiet_weight_averaging_warning()  # configure_model only shards under FSDP (quiet.py)
        check = getattr(self.datamodule, "check", None)
        if self.subcommand and callable(check):
            check()  # data errors now, before the Trainer creates log folders


def main(args: list[str] | None = None) -> None:
    """Entry point of ``dreamer-dynamics`` (``args=None`` reads ``sys.argv``)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["export"]:  # not a Trainer subcommand: handled before LightningCLI
        from dreamer_dynamics.export import main as export_main

        sys.exit(export_main(argv[1:]))
    if argv[:1] == ["play"]:  # a browser page that steers the model (play/cli.py)
        from dreamer_dynamics.play.cli import main as play_main

        sys.exit(play_main(argv[1:]))
    quiet_known_messages()
    try:
        if args is None:  # rewrite sys.argv itself: DDP launchers re-run it in the child processes
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
        else:
            args = resolve_config_args(list(args))
        DynamicsCLI(args=args)
    except USER_ERRORS as err:
        if show_traceback():
            raise
        print(f"dreamer-dynamics: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
