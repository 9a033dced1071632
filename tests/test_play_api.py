"""The JSON API of ``dreamer-dynamics play`` over real HTTP, without a browser: an export folder played on a
dataset with two discrete components and continuous actions (buttons and sliders on the page)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from dreamer_dynamics.data import LatentDatasetWriter
from dreamer_dynamics.data.reading.codec import codec_spec
from dreamer_dynamics.data.reading.patch_codec import PatchCodec
from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer
from dreamer_dynamics.play.server import serve
from dreamer_dynamics.play.world import PlayError, load_world

pytestmark = pytest.mark.usefixtures("single_thread")
CODEC = PatchCodec(4, 2, 3, 0.5, 0.25)  # 4x4 RGB frames <-> 4 tokens x 12 dims
CLASSES = (3, 2)


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    """An untrained tiny export and a dataset it fits, served on a free loopback port."""
    base = tmp_path_factory.mktemp("play_api")
    rng = np.random.default_rng(0)
    with LatentDatasetWriter(
        base / "data",
        latent_shape=(4, 12),
        num_discrete_actions=CLASSES,
        num_continuous_actions=2,
        codec=codec_spec(CODEC),
    ) as writer:
        for _ in range(3):
            writer.add_episode(
                CODEC.encode(rng.random((12, 4, 4, 3)).astype(np.float32)),
                actions_discrete=np.stack([rng.integers(0, n, 12) for n in CLASSES], 1),
                actions_continuous=rng.uniform(-2.0, 3.0, (12, 2)).astype(np.float32),
            )
    torch.manual_seed(0)
    config = DynamicsConfig.debug(
        latent_tokens=4, latent_dim=12, num_discrete_actions=CLASSES, num_continuous_actions=2
    )
    export = DynamicsTransformer(config).save_pretrained(base / "export", codec=codec_spec(CODEC))
    server = serve(load_world(export, data_root=str(base / "data"), context_frames=3))
    yield server, base
    server.shutdown()
    server.server_close()


def call(server, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(server.url + path.lstrip("/"), data=data)) as reply:
        return json.loads(reply.read())


def test_info_describes_the_actions_and_the_frames(played):
    info = call(played[0], "/api/info")
    assert info["actions"]["discrete"] == list(CLASSES) and not info["actions"]["arrows"]
    data = played[0].world.dataset
    recorded = np.concatenate([data[i]["actions_continuous"] for i in range(len(data))])  # (T, 2)
    ranges = np.array(info["actions"]["continuous"])  # slider ranges: what the (first) episodes hold
    assert np.allclose(ranges, np.stack([recorded.min(0), recorded.max(0)], 1), atol=1e-6)
    assert info["frame_shape"] == [4, 4, 3] and info["k_choices"] == [1, 2, 4, 8]  # debug k_max = 8


def test_steps_take_the_action_and_k_and_refuse_bad_ones(played):
    server, _ = played
    context = call(server, "/api/context", {"mode": "play", "k": 2})
    session = context["session"]
    assert len(context["context"]) == 3  # frames of the drawn context, decoded
    action = {"discrete": [2, 1], "continuous": [0.5, -1.0]}
    for t, k in enumerate((2, 8, 1), start=1):
        step = call(server, "/api/step", {"session": session, "action": action, "k": k})
        assert step["t"] == t and step["k"] == k and step["action"] == action and step["truth"] is None
        assert len(base64.b64decode(step["frame"])) == 4 * 4 * 3
    for bad in ({"discrete": [3, 0], "continuous": [0, 0]}, {"discrete": [0, 0], "continuous": [0]}):
        with pytest.raises(urllib.error.HTTPError) as err:
            call(server, "/api/step", {"session": session, "action": bad})
        assert err.value.code == 400
    with pytest.raises(urllib.error.HTTPError):
        call(server, "/api/step", {"session": session, "action": action, "k": 3})


def test_replay_feeds_the_recorded_actions_and_the_true_frames(played):
    server, _ = played
    context = call(server, "/api/context", {"mode": "replay"})
    dataset = server.world.dataset
    session = server.sessions.sessions[context["session"]]
    index, start = context["episode"], context["start"]
    recorded = dataset.window(index, start + 3, context["replay_frames"])
    truth = np.clip(np.rint(CODEC.decode(recorded["latents"]) * 255), 0, 255).astype(np.uint8)
    for t in range(context["replay_frames"]):
        step = call(server, "/api/step", {"session": context["session"], "action": {}})
        assert step["action"]["discrete"] == recorded["actions_discrete"][t].tolist()
        assert np.allclose(step["action"]["continuous"], recorded["actions_continuous"][t])
        assert base64.b64decode(step["truth"]) == truth[t].tobytes()
    assert call(server, "/api/step", {"session": context["session"], "action": {}})["done"]
    assert session.frames == context["replay_frames"]


def test_a_dataset_that_does_not_fit_is_one_line(played, tmp_path):
    _, base = played
    with LatentDatasetWriter(tmp_path / "other", latent_shape=(4, 6), codec=codec_spec(CODEC)) as writer:
        writer.add_episode(np.zeros((6, 4, 6), np.float32))
    with pytest.raises(PlayError, match=r"other: latents \[4, 6\].*do not fit the model \(latents \[4, 12\]"):
        load_world(base / "export", data_root=str(tmp_path / "other"))


def test_a_seeded_server_repeats_its_pages_and_a_replay_repeats_exactly(played):
    """Two servers started with the same seed give page n the same context and the same generated frames,
    however many live frames came before a replay; an unseeded server draws other contexts."""
    world = played[0].world

    def page(server, live_frames: int) -> list:
        call(server, "/api/context", {"mode": "play"})  # the first page, stepped a while: its own stream
        session = call(server, "/api/context", {"mode": "play"})["session"]
        for _ in range(live_frames):
            call(
                server,
                "/api/step",
                {"session": session, "action": {"discrete": [0, 0], "continuous": [0, 0]}},
            )
        context = call(server, "/api/context", {"mode": "replay", "session": session})
        steps = [call(server, "/api/step", {"session": session, "action": {}}) for _ in range(3)]
        return [context["episode"], context["start"], *(s["frame"] for s in steps)]

    pages = []
    for seed, live in ((7, 0), (7, 5), (None, 0), (None, 0)):
        server = serve(world, seed=seed)
        try:
            pages.append(page(server, live))
        finally:
            server.shutdown()
            server.server_close()
    assert pages[0] == pages[1]  # the same page, whatever came before the replay
    assert len({json.dumps(p) for p in pages}) > 1  # and not one fixed stream for every server
