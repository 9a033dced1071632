"""A fixed, exactly invertible patch encoder: the stand-in "tokenizer" of the built-in and Crafter datasets.

A frame [H, W, C] in [0, 1] is cut into p x p patches (N_b = (H/p)(W/p) tokens of D_b = p*p*C values),
standardised with fixed scalar statistics, and rotated by the orthonormal DCT-II matrix so that every latent
dimension mixes the whole patch (like a learned tokenizer's features, unlike raw pixels). Decoding applies
the transpose, so ``decode(encode(x)) == x`` up to float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix [n, n] (rows are basis vectors), closed form: identical everywhere."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    basis = np.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis


@dataclass
class PatchCodec:
    """Encode images [..., H, W, C] in [0, 1] to latents [..., N_b, D_b] and back; callable as a decoder."""

    image_size: int = 16  # frames are image_size x image_size
    patch: int = 4  # patch side p; N_b = (image_size / p)^2 tokens
    channels: int = 3  # colour channels C; D_b = p * p * C
    mean: float = 0.5  # pixel value subtracted before the rotation
    std: float = 0.5  # pixel scale divided out before the rotation (so latents have ~unit variance)

    def __post_init__(self):
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch}")
        self._basis = torch.from_numpy(dct_matrix(self.latent_dim)).float()  # (D_b, D_b), orthonormal

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, cols) of the tokens, row-major: the model's space layers use 2-D positions over it."""
        return self.grid, self.grid

    @property
    def latent_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def latent_dim(self) -> int:
        return self.patch * self.patch * self.channels

    def encode(self, images: Any) -> Any:
        """images [..., H, W, C] in [0, 1] (numpy or torch) -> latents [..., N_b, D_b] float32, same type."""
        if isinstance(images, torch.Tensor):
            x, basis = images.float(), self._basis.to(images.device)
        else:  # numpy stays in numpy: no tensor round trip, no intra-op thread pool for small arrays
            x, basis = np.asarray(images, dtype=np.float32), self._basis.numpy()
        patches = rearrange(x, "... (h p1) (w p2) c -> ... (h w) (p1 p2 c)", p1=self.patch, p2=self.patch)
        return ((patches - self.mean) / self.std) @ basis.T  # (..., N_b, D_b)

    def decode(self, latents: Any, *, clip: bool = False) -> Any:
        """latents [..., N_b, D_b] -> images [..., H, W, C]; exact inverse of encode (clip: display)."""
        if isinstance(latents, torch.Tensor):
            z, basis = latents.float(), self._basis.to(latents.device)
        else:
            z, basis = np.asarray(latents, dtype=np.float32), self._basis.numpy()
        patches = (z @ basis) * self.std + self.mean  # (..., N_b, D_b)
        images = rearrange(
            patches, "... (h w) (p1 p2 c) -> ... (h p1) (w p2) c", h=self.grid, p1=self.patch, p2=self.patch
        )
        if clip:
            images = images.clamp(0.0, 1.0) if isinstance(images, torch.Tensor) else np.clip(images, 0.0, 1.0)
        return images

    def __call__(self, latents: Any) -> Any:
        """Decoder for logging: latents [..., N_b, D_b] -> images [..., H, W, 3] in [0, 1]."""
        return self.decode(latents, clip=True)
