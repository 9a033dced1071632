"""Silence the known-spurious messages of a CLI run, each matched narrowly so real warnings still show.

* torch's ``isinstance(treespec, LeafSpec)`` deprecation, raised inside Lightning's own pytree helper (not
  ours to fix; it names torch internals a user cannot act on).
* Lightning's advertising tips for its logging / model-registry services ("💡 Tip: ...").
* ``WeightAveraging`` warning that the module overrides ``configure_model``: ours only shards under FSDP, so
  the warning is spurious for every other strategy (``quiet_weight_averaging_warning`` is called by the CLI
  when the strategy is not FSDP; under FSDP the warning is real and stays).
"""

from __future__ import annotations

import logging
import warnings

LEAFSPEC_MESSAGE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
WEIGHT_AVERAGING_MESSAGE = r"You're using the WeightAveraging callback with a model that overrides"
TIP_PREFIX = "💡 Tip:"
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


def quiet_known_messages() -> None:
    """Install the filters above (idempotent)."""
    warnings.filterwarnings("ignore", message=LEAFSPEC_MESSAGE)
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if not any(isinstance(f, _DropTips) for f in logger.filters):
        logger.addFilter(_DropTips())


def quiet_weight_averaging_warning() -> None:
    warnings.filterwarnings("ignore", message=WEIGHT_AVERAGING_MESSAGE)


__all__ = ["quiet_known_messages", "quiet_weight_averaging_warning"]
