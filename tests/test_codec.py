"""The codec protocol: specs in metadata, loading by class path, the picture decoder of any dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamer_dynamics.data import DatasetError, LatentDataset, LatentDatasetWriter, PatchCodec
from dreamer_dynamics.data.reading.codec import Codec, Decoder, codec_spec, decoder_for, load_codec
from tests.video_fixtures import BlockMeanCodec

BLOCK_SPEC = {
    "class_path": "tests.video_fixtures.BlockMeanCodec",
    "init_args": {"block": 4, "image_size": 16},
}


def write(root, codec=None):
    frames = np.random.default_rng(0).random((5, 16, 16, 3)).astype(np.float32)
    with LatentDatasetWriter(root, latent_shape=(16, 3), codec=codec) as writer:
        writer.add_episode(BlockMeanCodec().encode(frames))
    return frames


def test_patch_codec_spec_round_trip_and_protocol():
    codec = PatchCodec(32, 8, 3, 0.4, 0.3)
    spec = codec_spec(codec)
    assert spec == {
        "class_path": "dreamer_dynamics.data.reading.patch_codec.PatchCodec",
        "init_args": {"image_size": 32, "patch": 8, "channels": 3, "mean": 0.4, "std": 0.3},
    }
    assert load_codec(json.loads(json.dumps(spec))) == codec
    assert isinstance(codec, Codec) and isinstance(BlockMeanCodec(), Codec)


def test_dataset_codec_by_class_path_decodes_pictures(tmp_path):
    frames = write(tmp_path, codec=BLOCK_SPEC)
    ds = LatentDataset(tmp_path)
    assert ds.meta.codec == BLOCK_SPEC  # stored in metadata.json
    decoder = decoder_for(ds)
    latents = torch.from_numpy(np.asarray(ds[0]["latents"]))[None]  # (1, 5, 16, 3): extra leading dims
    images = decoder(latents)
    assert isinstance(images, torch.Tensor) and images.shape == (1, 5, 16, 16, 3)
    block_means = frames.reshape(5, 4, 4, 4, 4, 3).mean((2, 4))  # what the codec keeps of each frame
    np.testing.assert_allclose(images[0, :, ::4, ::4].numpy(), block_means, atol=1e-6)
    assert decoder(np.full((2, 16, 3), 7.0)).max() == 1.0  # numpy in, numpy out, clipped for display


def test_datamodule_decoder_comes_from_the_codec(tmp_path):
    from dreamer_dynamics.data import DynamicsDataModule

    write(tmp_path, codec=BLOCK_SPEC)
    dm = DynamicsDataModule(str(tmp_path), val_fraction=0)
    assert isinstance(dm.decoder, Decoder) and isinstance(dm.decoder.codec, BlockMeanCodec)


def test_unimportable_codec_warns_and_gives_no_pictures(tmp_path):
    write(tmp_path, codec={"class_path": "no_such_package.Codec", "init_args": {}})
    with pytest.warns(UserWarning, match="cannot import codec class 'no_such_package.Codec'"):
        assert decoder_for(LatentDataset(tmp_path)) is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"init_args": {}}, "needs a 'class_path'"),
        ({"class_path": "Codec"}, "must look like 'package.module.Class'"),
        (
            {"class_path": "tests.video_fixtures.BlockMeanCodec", "init_args": {"bad": 1}},
            "cannot build codec",
        ),
        ({"class_path": "numpy.ndarray", "init_args": {"shape": 1}}, "has no encode\\(\\) method"),
        ("patch", "must be a JSON object"),
    ],
)
def test_bad_codec_specs_are_named(spec, message):
    with pytest.raises(DatasetError, match=message):
        load_codec(spec, "metadata.json")


def test_appending_with_another_codec_is_refused(tmp_path):
    write(tmp_path, codec=BLOCK_SPEC)
    other = {**BLOCK_SPEC, "init_args": {"block": 2, "image_size": 16}}
    with pytest.raises(DatasetError, match="cannot append: existing codec"):
        LatentDatasetWriter(tmp_path, latent_shape=(16, 3), codec=other)
