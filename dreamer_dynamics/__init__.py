"""dreamer_dynamics: train the dynamics model of a DreamerV4-style world model with PyTorch Lightning.

Convention everywhere (paper, docs/design.md §2): signal level tau = 0 is pure noise, tau = 1 is clean data.
"""

__version__ = "0.1.0"
