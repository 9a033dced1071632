"""LossNormalizer: running RMS of named loss terms (paper Sec. 3), checkpointing, a real 2-rank all-reduce."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dreamer_dynamics.objective import LossNormalizer


def test_running_rms_and_normalised_terms():
    norm = LossNormalizer(decay=0.9)
    values = [2.0, 4.0, 1.0]
    ms = None
    for v in values:
        out = norm({"flow": torch.tensor(v), "bootstrap": torch.tensor(v / 10)})
        ms = v**2 if ms is None else 0.9 * ms + 0.1 * v**2
        torch.testing.assert_close(norm.rms("flow"), torch.tensor(ms).sqrt())
        torch.testing.assert_close(out["flow"], torch.tensor(v / ms**0.5))
        torch.testing.assert_close(out["bootstrap"], torch.tensor(v / ms**0.5))  # same relative scale
    assert sorted(norm.names()) == ["bootstrap", "flow"]


def test_eval_mode_freezes_and_gradient_passes_through():
    norm = LossNormalizer(decay=0.5)
    norm({"flow": torch.tensor(3.0)})
    norm.eval()
    x = torch.tensor(6.0, requires_grad=True)
    out = norm({"flow": x})["flow"]
    out.backward()
    torch.testing.assert_close(norm.rms("flow"), torch.tensor(3.0))
    torch.testing.assert_close(x.grad, torch.tensor(1 / 3))


def test_disabled_passes_terms_through_but_tracks_rms():
    norm = LossNormalizer(enabled=False)
    t = {"flow": torch.tensor(5.0)}
    assert norm(t)["flow"] is t["flow"]
    torch.testing.assert_close(norm.rms("flow"), torch.tensor(5.0))


def test_state_dict_round_trip_resumes_exactly():
    a = LossNormalizer(decay=0.99)
    for v in (1.0, 2.0, 3.0):
        a({"flow": torch.tensor(v), "reward.head": torch.tensor(v * 2)})
    b = LossNormalizer(decay=0.99)
    b.load_state_dict(a.state_dict())
    assert set(b.state_dict()) == {"mean_square_flow", "mean_square_reward_head"}
    nxt = {"flow": torch.tensor(0.5), "reward.head": torch.tensor(7.0)}
    out_a, out_b = a(nxt), b(nxt)
    for name in nxt:
        torch.testing.assert_close(out_b[name], out_a[name])
        torch.testing.assert_close(b.rms(name), a.rms(name))


def test_normalise_before_any_update_is_an_error():
    norm = LossNormalizer().eval()
    with pytest.raises(RuntimeError, match="no running RMS"):
        norm({"flow": torch.tensor(1.0)})


def test_predeclared_terms_start_at_first_observation():
    norm = LossNormalizer(decay=0.9, names=("flow", "bootstrap"))
    assert set(norm.state_dict()) == {"mean_square_flow", "mean_square_bootstrap"}
    assert norm.rms("flow").isnan()  # not observed yet
    with pytest.raises(RuntimeError, match="no running RMS"):
        norm.eval()({"flow": torch.tensor(1.0)})
    norm.train()
    norm({"flow": torch.tensor(2.0), "bootstrap": torch.tensor(0.5)})
    norm({"flow": torch.tensor(4.0), "bootstrap": torch.tensor(0.5)})
    torch.testing.assert_close(norm.rms("flow"), torch.tensor(0.9 * 4 + 0.1 * 16).sqrt())
    torch.testing.assert_close(norm.rms("bootstrap"), torch.tensor(0.5))


def _rank_worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    norm = LossNormalizer(decay=0.5)
    norm({"flow": torch.tensor(float(rank + 1))})  # squares 1 and 4 -> mean 2.5
    norm({"flow": torch.tensor(float(3 * (rank + 1)))})  # squares 9 and 36 -> mean 22.5
    torch.save(norm.rms("flow"), f"{result_file}.{rank}")
    dist.destroy_process_group()


def test_all_reduce_across_a_real_two_rank_group(tmp_path):
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "rms")), nprocs=2, join=True)
    expected = torch.tensor(0.5 * 2.5 + 0.5 * 22.5).sqrt()
    for rank in range(2):
        torch.testing.assert_close(torch.load(f"{tmp_path / 'rms'}.{rank}", weights_only=True), expected)
