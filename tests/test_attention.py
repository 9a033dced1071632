"""Every attention path the model can take agrees with a plain softmax attention (docs/design.md §4)."""

import math
import warnings

import pytest
import torch

from dreamer_dynamics.model import DynamicsConfig, DynamicsTransformer
from dreamer_dynamics.model.attention import HAS_FLEX, AttentionMask, attend, resolve_backend
from dreamer_dynamics.model.transformer import time_attention_mask

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile.*"),
    pytest.mark.usefixtures("single_thread"),
]


def reference_attention(q, k, v, allowed, softcap):
    """Textbook attention, one (sequence, head) at a time, in float64. allowed: (N, Lq, Lk) bool or None."""
    n, hq, lq, e = q.shape
    group = hq // k.shape[1]
    out = torch.empty(n, hq, lq, e, dtype=torch.float64)
    for i in range(n):
        for h in range(hq):
            qi, ki, vi = q[i, h].double(), k[i, h // group].double(), v[i, h // group].double()
            logits = qi @ ki.T / math.sqrt(e)
            if softcap is not None:
                logits = softcap * torch.tanh(logits / softcap)
            if allowed is not None:
                logits = logits.masked_fill(~allowed[i], float("-inf"))
            out[i, h] = torch.softmax(logits, -1) @ vi
    return out


def backends(softcap):
    names = ["math"] + (["flex"] if HAS_FLEX else [])
    return names + (["sdpa"] if softcap is None else [])


def random_qkv(n=6, hq=4, hkv=2, lq=5, lk=5, e=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Scaled so soft-capping is active (logits well beyond the cap) and the test would notice a missing cap.
    q = 3 * torch.randn(n, hq, lq, e, generator=g)
    k = 3 * torch.randn(n, hkv, lk, e, generator=g)
    v = torch.randn(n, hkv, lk, e, generator=g)
    return q, k, v


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_unmasked_paths_match_reference(softcap, hkv):
    q, k, v = random_qkv(hkv=hkv)
    expected = reference_attention(q, k, v, None, softcap)
    for backend in backends(softcap):
        got = attend(q, k, v, mask=None, softcap=softcap, backend=backend)
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5, msg=backend)


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_masked_paths_match_reference_causal_window_and_image_rows(softcap):
    """Time attention layout: batch rows, 3 token positions folded into the heads (3 x 4 query, 3 x 2 kv)."""
    batch, t, window = 2, 7, 3
    q, k, v = random_qkv(n=batch, hq=12, hkv=6, lq=t, lk=t)
    pos = torch.arange(t)
    for image_rows in (None, torch.tensor([True, False])):
        dense = time_attention_mask(pos, pos, window, image_rows)
        expected = reference_attention(q, k, v, dense.expand(batch, t, t), softcap)
        for backend in backends(softcap):
            got = attend(q, k, v, mask=AttentionMask(dense), softcap=softcap, backend=backend)
            torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5, msg=backend)


def test_cached_single_query_matches_reference():
    """The rollout path: one new frame's query against cached keys plus its own (Lq = 1, no mask)."""
    q, k, v = random_qkv(lq=1, lk=6)
    expected = reference_attention(q, k, v, None, 2.0)
    for backend in backends(2.0):
        got = attend(q, k, v, mask=None, softcap=2.0, backend=backend)
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5, msg=backend)


def test_time_mask_is_causal_window_and_image_rows_are_diagonal():
    pos = torch.arange(6)
    dense = time_attention_mask(pos, pos, 3, torch.tensor([False, True]))
    for qi in range(6):
        for ki in range(6):
            assert dense[0, qi, ki] == (0 <= qi - ki < 3)
            assert dense[1, qi, ki] == (qi == ki)
    # A single new frame after 2 cached frames with C = 3 sees everything: no mask needed.
    assert time_attention_mask(torch.tensor([5]), torch.tensor([3, 4, 5]), 3, None) is None


def test_backend_resolution():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", None, cpu) == "sdpa"
    assert resolve_backend("auto", 50.0, cpu) == "math"
    if HAS_FLEX:
        assert resolve_backend("auto", 50.0, torch.device("cuda")) == "flex"
        assert resolve_backend("auto", 50.0, torch.device("cuda"), query_len=1) == "math"  # rollout decode
    with pytest.raises(ValueError, match="cannot soft-cap"):
        resolve_backend("sdpa", 50.0, cpu)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_model_outputs_agree_across_backends(softcap):
    """Whole-model check: the same weights through every kernel path give the same x1_hat."""
    torch.manual_seed(0)
    outputs, first_state = {}, None
    b, t = 2, 8  # t > context_length: the window mask is active
    for backend in backends(softcap):
        cfg = DynamicsConfig.debug(attention_softcap=softcap, attention_backend=backend)
        model = DynamicsTransformer(cfg)
        if first_state is not None:
            model.load_state_dict(first_state)
        else:
            first_state = model.state_dict()
        g = torch.Generator().manual_seed(1)
        z = torch.randn(b, t, cfg.latent_tokens, cfg.latent_dim, generator=g)
        tau = torch.randint(0, cfg.k_max, (b, t), generator=g) / cfg.k_max
        d = torch.full((b, t), 1.0 / cfg.k_max)
        with warnings.catch_warnings(), torch.no_grad():  # eager FlexAttention has no CPU backward
            warnings.simplefilter("ignore")
            outputs[backend] = model(z, tau, d, image_rows=torch.tensor([False, True]))
    reference = outputs.pop("math")
    for backend, out in outputs.items():
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5, msg=backend)
