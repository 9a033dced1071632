"""Latent datasets: ``reading`` (format, dataset, sampler, DataModule, codecs) and ``building`` (writer,
conversion, the built-in worlds). Reading never imports building; names of building load only when asked for.

See docs/data.md for the on-disk format and the ``dreamer-dynamics-data`` command.
"""

from .reading.codec import Codec, codec_spec, decoder_for, load_codec
from .reading.dataset import LatentDataset, LatentWindowDataset, split_episodes
from .reading.format import FORMAT_VERSION, DatasetError, DatasetMetadata
from .reading.patch_codec import PatchCodec
from .reading.sampler import AlternatingLengthBatchSampler

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
    "builtin_datamodule",
    "codec_spec",
    "decoder_for",
    "evaluation_references",
    "load_codec",
    "split_episodes",
]

_LAZY = {  # name -> module: the DataModule imports Lightning, building is not needed for training
    "DynamicsDataModule": "reading.datamodule",
    "LatentDatasetWriter": "building.writer",
    "builtin_datamodule": "building.worlds",
    "evaluation_references": "building.worlds",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
