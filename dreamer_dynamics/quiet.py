"""Silence the known-spurious messages of a CLI run, each matched narrowly so real warnings still show.

* torch's ``isinstance(treespec, LeafSpec)`` deprecation, raised inside Lightning's own pytree helper (not
  ours to fix; it names torch internals a user cannot act on).
* "Seed set to 0" (the seed is in the saved config), and Lightning warnings that are spurious for the
  CLI's runs (``SPURIOUS_WARNINGS``: the logging interval on small data, a resumed run's non-empty
  checkpoint folder, an evaluated checkpoint's ModelCheckpoint and WeightAveraging state).
* Lightning's advertising tips for its logging / model-registry services ("💡 Tip: ...").
* ``WeightAveraging`` warning that the module overrides ``configure_model``: ours only shards under FSDP, so
  the warning is spurious for every other strategy (``quiet_weight_averaging_warning`` is called by the CLI
  when the strategy is not FSDP; under FSDP the warning is real and stays).
"""

from __future__ import annotations

import logging
import warnings

LEAFSPEC_MESSAGE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# Lightning warnings that are spurious for the CLI's runs (each narrow: the rest of the warning stays):
SPURIOUS_WARNINGS = (
    r"The number of training batches \(\d+\) is smaller than the logging interval",  # small data: expected
    r"Checkpoint directory .* exists and is not empty",  # a resumed run writes into its own folder again
    r"The dirpath has changed from",  # evaluating a checkpoint: its ModelCheckpoint bookkeeping is irrelevant
    r"You're using the WeightAveraging callback, but (loading|saving) a checkpoint outside the 'fit' stage",
    r"`weights_only` was not set, defaulting to",  # the CLI loads weights-only (--weights_only true)
)
SEED_LOGGER = "lightning.fabric.utilities.seed"  # "Seed set to 0": the seed is in the saved config
WEIGHT_AVERAGING_MESSAGE = r"You're using the WeightAveraging callback with a model that overrides"
TIP_PREFIX = "💡 Tip:"
SUMMARY_NOTE = "Trainer already configured with model summary"  # the CLI's one-line summary replaces it
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropSeedLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Seed set to" not in str(record.msg)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith((TIP_PREFIX, SUMMARY_NOTE))


def quiet_known_messages() -> None:
    """Install the filters above (idempotent)."""
    warnings.filterwarnings("ignore", message=LEAFSPEC_MESSAGE)
    for message in SPURIOUS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if not any(isinstance(f, _DropTips) for f in logger.filters):
        logger.addFilter(_DropTips())
    seed = logging.getLogger(SEED_LOGGER)
    if not any(isinstance(f, _DropSeedLine) for f in seed.filters):
        seed.addFilter(_DropSeedLine())


def quiet_weight_averaging_warning() -> None:
    warnings.filterwarnings("ignore", message=WEIGHT_AVERAGING_MESSAGE)


__all__ = ["quiet_known_messages", "quiet_weight_averaging_warning"]
