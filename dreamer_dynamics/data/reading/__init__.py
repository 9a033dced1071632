"""Reading latent datasets for training: the format, dataset, sampler, DataModule, statistics and codecs.

Nothing here imports ``dreamer_dynamics.data.building`` (tests/test_import_graph.py checks it).
"""
