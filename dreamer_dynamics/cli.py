"""Console script ``dreamer-dynamics``: LightningCLI with ``fit``, ``validate``, ``test`` and ``predict``.

    dreamer-dynamics fit --config lightning_configs/quickstart.yaml
    dreamer-dynamics fit --config lightning_configs/quickstart.yaml --data.root /path/to/latents
    dreamer-dynamics fit --config lightning_configs/quickstart.yaml --ckpt_path runs/.../last.ckpt
    dreamer-dynamics predict --config lightning_configs/quickstart.yaml --ckpt_path runs/.../last.ckpt
    dreamer-dynamics fit --config lightning_configs/quickstart.yaml --print_config
    dreamer-dynamics export runs/.../last.ckpt exported/          # config JSON + safetensors (export.py)

The model's latent shape and action spec are *linked* from the DataModule when both are instantiated, so
``--data.root`` alone switches datasets (the linked keys ``model.model.latent_tokens`` etc. are not settable).
Checkpoints are loaded with weights-only unpickling (``--weights_only true`` is the default here).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from dreamer_dynamics.data import DynamicsDataModule
from dreamer_dynamics.module import DynamicsModule

# DataModule property -> DynamicsConfig field (model.model.<field>)
LINKED_DATA_FIELDS = ("latent_tokens", "latent_dim", "num_discrete_actions", "num_continuous_actions")


class DynamicsCLI(LightningCLI):
    """LightningCLI with the data -> model links and weights-only checkpoint loading.

    Use it with a subclass of ``DynamicsModule`` from your own script: ``DynamicsCLI(MyModule)``.
    """

    def __init__(self, model_class: Any = DynamicsModule, datamodule_class: Any = DynamicsDataModule,
                 **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(model_class, datamodule_class, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for field in LINKED_DATA_FIELDS:
            parser.link_arguments(f"data.{field}", f"model.model.{field}", apply_on="instantiate")

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in self._subcommand_method_arguments.get(subcommand, {}):
            # Safe default: checkpoints hold only tensors and plain containers (see on_save_checkpoint).
            parser.set_defaults(weights_only=True)
        return parser


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``dreamer-dynamics`` (``args=None`` reads ``sys.argv``). ``export`` is handled before
    LightningCLI (it is not a Trainer subcommand)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["export"]:
        from dreamer_dynamics.export import main as export_main

        sys.exit(export_main(argv[1:]))
    DynamicsCLI(args=args)


if __name__ == "__main__":
    main()
