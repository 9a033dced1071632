"""Console script ``dreamer-dynamics``: LightningCLI with ``fit``, ``validate``, ``test`` and ``predict``.

    dreamer-dynamics fit --config lightning_configs/quickstart.yaml
    dreamer-dynamics fit --config lightning_configs/quickstart.yaml --data.root /path/to/latents
    dreamer-dynamics fit --config lightning_configs/quickstart.yaml --ckpt_path runs/.../last.ckpt
    dreamer-dynamics predict --config lightning_configs/quickstart.yaml --ckpt_path runs/.../last.ckpt
    dreamer-dynamics fit --config lightning_configs/quickstart.yaml --print_config

The model's latent shape and action spec are *linked* from the DataModule when both are instantiated, so
``--data.root`` alone switches datasets (the linked keys ``model.model.latent_tokens`` etc. are not settable);
so are the latent statistics the batches are standardised with (``data.latent_stats`` -> ``model.latent_stats``,
None with ``--data.standardize false``).
Checkpoints are loaded with weights-only unpickling (``--weights_only true`` is the default here).
"""

from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from dreamer_dynamics.data import DynamicsDataModule
from dreamer_dynamics.module import DynamicsModule

# DataModule property -> DynamicsConfig field (model.model.<field>)
LINKED_DATA_FIELDS = ("latent_tokens", "latent_dim", "num_discrete_actions", "num_continuous_actions")


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


class DynamicsCLI(LightningCLI):
    """LightningCLI with the data -> model links and weights-only checkpoint loading.

    Use it with a subclass of ``DynamicsModule`` from your own script: ``DynamicsCLI(MyModule)``.
    """

    def __init__(self, model_class: Any = DynamicsModule, datamodule_class: Any = DynamicsDataModule,
                 **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", WeightsOnlyParser)
        super().__init__(model_class, datamodule_class, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for field in LINKED_DATA_FIELDS:
            parser.link_arguments(f"data.{field}", f"model.model.{field}", apply_on="instantiate")
        parser.link_arguments("data.latent_stats", "model.latent_stats", apply_on="instantiate")


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``dreamer-dynamics`` (``args=None`` reads ``sys.argv``)."""
    DynamicsCLI(args=args)


if __name__ == "__main__":
    main()
