"""``EvaluationReferences``: what a dataset knows of the truth beyond its stored latents (docs/training.md).

Evaluation scores rollouts against more than the one stored future where the data allow it: an object
locator (positions of the objects a frame shows, for the object-accuracy metric) and an oracle (samples of the
true future of a window, for the oracle-referenced energy scores, ``training.scores.oracle_scores``). The
built-in worlds provide both; a dataset of one's own provides none. The module receives them as an argument
(the CLI links them from the data), never by reaching into the DataModule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor


class Oracle(Protocol):
    """Samples of the true future of evaluation windows, in the dataset's own units."""

    def sample(self, episode: Any, first: Any, actions: Any, samples: int, seed: int = 0) -> Tensor:
        """Episodes [B], first future frames [B], actions [B, H] -> latents [B, samples, H, N_b, D_b]."""
        ...


@dataclass(frozen=True)
class EvaluationReferences:
    """The object locator and oracle of a dataset; either may be None (a dataset of one's own: both)."""

    object_locator: Callable[[Tensor], Tensor] | None = None  # data-unit latents -> object positions
    oracle: Oracle | None = None  # samples of the true future (``Oracle.sample``)


__all__ = ["EvaluationReferences", "Oracle"]
