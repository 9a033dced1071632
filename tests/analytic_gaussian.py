"""Closed-form denoisers for Gaussian data z1 ~ N(mu, sigma^2) (independently per element), z0 ~ N(0, 1).

With z_tau = (1 - tau) z0 + tau z1 the marginal is N(tau mu, s(tau)^2), s(tau)^2 = (1 - tau)^2 + tau^2
sigma^2, and:
- the posterior mean (the optimal flow-term x-prediction) is mu + tau sigma^2 / s^2 (z - tau mu), with
  posterior variance sigma^2 (1 - tau)^2 / s^2;
- the probability-flow map from tau to tau' is affine: it keeps (z - tau mu) / s(tau) fixed, so
  Phi(z) = tau' mu + s(tau') / s(tau) (z - tau mu);
- the exact shortcut denoiser at (tau, d) is the x-prediction whose Euler step of size d lands on
  Phi_{tau->tau+d}: x = z + (1 - tau) / d (Phi(z) - z).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dreamer_dynamics.objective.flow import expand_like


@dataclass
class GaussianData:
    mu: float = 0.7
    sigma: float = 0.5

    def std(self, tau: Tensor) -> Tensor:
        return ((1 - tau) ** 2 + tau**2 * self.sigma**2).sqrt()

    def posterior_variance(self, tau: Tensor) -> Tensor:
        return self.sigma**2 * (1 - tau) ** 2 / self.std(tau) ** 2

    def posterior_mean(self, z: Tensor, tau: Tensor, d: Tensor, **_) -> Tensor:
        t = expand_like(tau, z).double()
        s2 = (1 - t) ** 2 + t**2 * self.sigma**2
        return (self.mu + t * self.sigma**2 / s2 * (z.double() - t * self.mu)).to(z.dtype)

    def flow_map(self, z: Tensor, tau: Tensor, tau_to: Tensor) -> Tensor:
        t, t2 = expand_like(tau, z).double(), expand_like(tau_to, z).double()
        return t2 * self.mu + self.std(t2) / self.std(t) * (z.double() - t * self.mu)

    def shortcut(self, z: Tensor, tau: Tensor, d: Tensor, **_) -> Tensor:
        t, dd = expand_like(tau, z).double(), expand_like(d, z).double()
        phi = self.flow_map(z, tau, tau + d)
        return (z.double() + (1 - t) / dd * (phi - z.double())).to(z.dtype)
