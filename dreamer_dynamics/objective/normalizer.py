"""Running-RMS normalisation of named loss terms (paper Sec. 3: every loss term is divided by a running
estimate of its root-mean-square, so that heads of different scales can share one network)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn


class LossNormalizer(nn.Module):
    """Divide each named loss term by the running RMS of that term.

    The estimate is an EMA of the squared (detached) term, ``ms <- decay * ms + (1 - decay) * term^2``,
    started at the first observation, all-reduced (averaged) across ranks so that every rank divides by the
    same number. It only updates in training mode and is stored in ``state_dict`` (one buffer per term,
    created on first use), so checkpoints resume it exactly. With ``enabled=False`` the terms pass through
    unchanged, but their RMS is still tracked for logging. Every rank must pass the same term names at each
    call (a collective is issued).
    """

    def __init__(
        self, decay: float = 0.99, eps: float = 1e-8, enabled: bool = True, names: Sequence[str] = ()
    ):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay, self.eps, self.enabled = decay, eps, enabled
        # Terms known up front get their buffer now (NaN = not observed yet), so that wrappers such as FSDP,
        # which only manage buffers that exist when they wrap the module, see them; others are added lazily.
        for name in names:
            self.register_buffer(self._key(name), torch.tensor(float("nan")))

    @staticmethod
    def _key(name: str) -> str:
        return "mean_square_" + name.replace(".", "_").replace("/", "_")

    def names(self) -> list[str]:
        return [k[len("mean_square_") :] for k, _ in self.named_buffers(recurse=False)]

    def rms(self, name: str) -> Tensor:
        """Current running RMS of ``name``."""
        return getattr(self, self._key(name)).sqrt()

    @torch.no_grad()
    def update(self, terms: dict[str, Tensor]) -> None:
        names = sorted(terms)
        squares = torch.stack([terms[n].detach().float().square() for n in names])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(squares, op=dist.ReduceOp.SUM)
            squares /= dist.get_world_size()
        for name, square in zip(names, squares):
            key = self._key(name)
            if not hasattr(self, key):
                self.register_buffer(key, square.clone())
                continue
            buf = getattr(self, key)
            square = square.to(buf.device)
            buf.copy_(torch.where(buf.isnan(), square, self.decay * buf + (1 - self.decay) * square))

    def forward(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Return ``{name: term / max(rms, eps)}`` (or the terms themselves when disabled)."""
        if self.training:
            self.update(terms)
        if not self.enabled:
            return dict(terms)
        missing = [n for n in terms if not hasattr(self, self._key(n)) or self.rms(n).isnan()]
        if missing:
            raise RuntimeError(
                f"no running RMS yet for loss terms {missing}: call once in training mode first"
            )
        return {n: t / self.rms(n).clamp_min(self.eps).to(t.dtype) for n, t in terms.items()}

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected, errors
    ):
        # Buffers are created lazily per term; materialise the ones a checkpoint holds before loading.
        for key, value in state_dict.items():
            if key.startswith(prefix + "mean_square_") and "." not in key[len(prefix) :]:
                name = key[len(prefix) :]
                if not hasattr(self, name):
                    self.register_buffer(name, torch.zeros_like(value))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected, errors
        )

    def extra_repr(self) -> str:
        return f"decay={self.decay}, eps={self.eps}, enabled={self.enabled}, terms={self.names()}"
