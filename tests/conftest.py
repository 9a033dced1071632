"""Fixtures and helpers shared by the test files."""

import pytest
import torch

from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer


@pytest.fixture
def single_thread():
    """Tiny models are dispatch-bound: one thread is faster and immune to OpenMP spin contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_debug_model(seed=0, **overrides) -> DynamicsTransformer:
    """The tiny ``DynamicsConfig.debug()`` network (with ``overrides``), seeded, in eval mode."""
    torch.manual_seed(seed)
    return DynamicsTransformer(DynamicsConfig.debug(**overrides)).eval()
