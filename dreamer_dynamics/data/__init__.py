"""Latent datasets (format, writer, reader), the alternating-length sampler, the DataModule, built-in data.

See docs/data.md for the on-disk format and the ``dreamer-dynamics-data`` command.
"""

from .codec import Codec, codec_spec, decoder_for, load_codec
from .dataset import LatentDataset, LatentWindowDataset, split_episodes
from .format import FORMAT_VERSION, DatasetError, DatasetMetadata
from .patch_codec import PatchCodec
from .sampler import AlternatingLengthBatchSampler
from .writer import LatentDatasetWriter

__all__ = [
    "FORMAT_VERSION",
    "AlternatingLengthBatchSampler",
    "Codec",
    "DatasetError",
    "DatasetMetadata",
    "DynamicsDataModule",
    "LatentDataset",
    "LatentDatasetWriter",
    "LatentWindowDataset",
    "PatchCodec",
    "codec_spec",
    "decoder_for",
    "load_codec",
    "split_episodes",
]


def __getattr__(name):  # the DataModule imports Lightning: load it only when asked for
    if name == "DynamicsDataModule":
        from .datamodule import DynamicsDataModule

        return DynamicsDataModule
    raise AttributeError(name)
