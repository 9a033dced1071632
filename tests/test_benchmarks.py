"""The benchmarks run (smallest modes) and write valid JSON with the figures docs/benchmarks.md quotes.

No timing assertions: speed is measured by running the benchmarks, not by tests. The analytic FLOP count is
checked against a hand count, and the timing helper against its own contract.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import (
    common,
    device_run,
    fit_to_time,
    gpu,
    learning,
    quality,
    rollout_errors,
    rollout_speed,
    run_all,
    scaling,
    train_step,
)


def read(path):
    return json.loads(path.read_text())


def tiny_quickstart(root) -> list[str]:
    """The quickstart with a 16-wide, 2-block network on tiny batches, run under ``root``, no validation."""
    return [
        f"--config={quality.QUICKSTART}",
        f"--trainer.default_root_dir={root}",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--data.short_batch_size=2",
        "--data.long_batch_size=1",
        "--model.model.dim=16",
        "--model.model.heads=4",
        "--model.model.depth=2",
    ]


def test_forward_flops_matches_a_hand_count():
    cfg = common.medium_config(latent_tokens=16, latent_dim=32, num_discrete_actions=(5,), context_length=4)
    flops = common.forward_flops(cfg, batch=2, time_steps=8)
    s, frames, e = 16 + 4 + 1 + 1, 16, 64
    hidden = 704  # int(2 * 4 * 256 / 3) = 682 rounded up to a multiple of 64
    per_block = 256 * (4 + 4) * e + 256 * 256 + 256 * 2 * hidden + hidden * 256
    matmul = 2 * frames * s * per_block * 8 + 2 * frames * 16 * 32 * 256 * 2 + 2 * frames * 512 * 256
    assert flops["matmul"] == matmul
    assert flops["attention_space"] == 6 * frames * 4 * s * s * e * 4  # 6 space layers, 4 heads
    assert flops["attention_time_dense"] == 2 * 2 * s * 4 * 8 * 8 * e * 4  # 2 time layers, T = 8
    pairs = 1 + 2 + 3 + 4 * 5  # causal window C = 4 over 8 frames
    assert flops["attention_time_windowed"] == 2 * 2 * s * 4 * pairs * e * 4


def test_time_interleaved_times_every_variant_round_robin():
    calls = []
    timings = common.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=3, warmup=1
    )
    assert calls == ["a", "b"] * 4
    assert all(len(t.repeats) == 3 and t.best <= t.median for t in timings.values())


def test_peak_memory_sees_a_large_allocation():
    with common.peak_memory(torch.device("cpu")) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert memory["peak_bytes"] > 0
    if memory["resettable"]:
        assert memory["delta_bytes"] >= 48 * 2**20


def test_train_step_smoke(tmp_path):
    train_step.main(["--smoke", "--repeat", "1", "--output", str(tmp_path / "t.json")])
    report = read(tmp_path / "t.json")
    assert set(report["lengths"]) == {"short", "long"}
    for figures in report["lengths"].values():
        assert figures["shortcut_over_flow"] > 0 and figures["teacher_over_student"] > 0
        assert figures["shortcut_step_fraction_of_peak"] > 0
        assert figures["flops_step"]["shortcut_step"] > figures["flops_step"]["flow_step"]
    assert report["machine"]["threads"] == 1 and report["profile_short_shortcut_step"]
    assert report["matmul_peak"]["flops"] >= max(
        f["matmul_peak_probe_flops"] for f in report["lengths"].values()
    )
    assert set(report["targets_met"]) == set(train_step.TARGETS)


def test_scaling_and_rollout_smoke(tmp_path):
    scaling.main(["--smoke", "--repeat", "1", "--output", str(tmp_path / "s.json")])
    rows = read(tmp_path / "s.json")["rows"]
    assert [r["T"] for r in rows] == [4, 8, 16] and rows[0]["windowed_relative"] == 1.0
    # Fixed frames per batch: the windowed time attention does less work than full causal attention at T > C.
    assert rows[-1]["attention_time_flops_windowed"] < rows[-1]["attention_time_flops_full_causal"]
    rollout_speed.main(["--smoke", "--output", str(tmp_path / "r.json")])
    results = read(tmp_path / "r.json")["results"]
    assert {(r["horizon"], r["use_cache"]) for r in results} == {(2, True), (2, False), (4, True), (4, False)}


def test_quality_and_gpu_smoke(tmp_path):
    common = ["--workdir", str(tmp_path / "runs"), "--plot", str(tmp_path / "q.png")]
    quality.main(["--smoke", *common, "--output", str(tmp_path / "q.json")])
    report = read(tmp_path / "q.json")
    pair = report["seeds"]["0"]
    assert set(pair) == {"shortcut", "flow_only"}
    # equal compute: the flow-only model trains warm-up + (steps - warm-up) x the measured cost ratio
    assert pair["shortcut"]["steps"] == 4 and report["cost_ratio"] > 0
    assert pair["flow_only"]["steps"] == 2 + round(2 * report["cost_ratio"])
    for model in pair.values():
        scores = model["scores"]["h4"]  # smoke: 4 generated frames, K_max = 4
        floor, copy = scores["oracle_es"], scores["es_copy_last"]
        assert 0 < floor < scores["oracle_mean_es"]  # the oracle scores better than its own mean
        for k in (1, 2, 4):  # ratio = ES / copy-last ES; excess between the oracle (0) and copy-last (1)
            es = scores[f"es_k{k}"]
            assert scores[f"es_ratio_k{k}"] == pytest.approx(es / copy, rel=1e-5)
            assert scores[f"excess_k{k}"] == pytest.approx((es - floor) / (copy - floor), rel=1e-4)
            assert es > floor  # an untrained model is worse than the truth
    row = report["summary"]["h4"]
    assert row["shortcut_k4_over_kmax"]["mean"] == pytest.approx(1.0)  # K = 4 is K_max here
    shortcut, flow = pair["shortcut"]["scores"]["h4"], pair["flow_only"]["scores"]["h4"]
    assert row["diff_es_k1"]["values"] == [pytest.approx(shortcut["es_k1"] - flow["es_k1"])]
    quality.main(["--combine", str(tmp_path / "q.json"), *common, "--output", str(tmp_path / "c.json")])
    assert read(tmp_path / "c.json")["summary"] == report["summary"]
    gpu.main(["--smoke", "--output", str(tmp_path / "g.json")])
    report = read(tmp_path / "g.json")
    assert report["mfu"]["achieved_flops_per_s"] > 0 and report["rollout"]["frames_per_s"] > 0


def test_learning_curves_smoke(tmp_path):
    learning.main(
        [
            "--smoke",
            "--variants",
            "recipe",
            "--output",
            str(tmp_path / "l.json"),
            "--plot",
            str(tmp_path / "l.png"),
        ]
    )
    curve = read(tmp_path / "l.json")["variants"]["recipe"]["curve"]
    assert [p["step"] for p in curve] == [2, 4]  # a validation every 2 of the 4 steps
    assert all(0.0 <= p["object_accuracy_k4"] <= 1.0 and p["rollout_es_ratio_k4"] > 0 for p in curve)
    assert curve[1]["train_seconds"] > curve[0]["train_seconds"] > 0
    assert (tmp_path / "l.png").stat().st_size > 0


def test_rollout_errors_of_a_checkpoint(tmp_path):
    from dreamer_dynamics.cli import DynamicsCLI

    args = [*tiny_quickstart(tmp_path), "--trainer.max_steps=2"]
    cli = DynamicsCLI(args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.save_checkpoint(tmp_path / "model.ckpt")
    report = rollout_errors.main(
        [str(tmp_path / "model.ckpt"), "--contexts", "3", "--samples", "2", "--steps", "1", "2"]
        + ["--threads", "1", "--output", str(tmp_path / "r.json")]
    )
    assert read(tmp_path / "r.json")["contexts"] == report["contexts"] == 3
    for k in ("1", "2"):
        r = read(tmp_path / "r.json")["k"][k]
        assert len(r["accuracy_per_frame"]) == 8 and len(r["accuracy_per_object"]) == 3  # sprite + 2 balls
        assert r["es_ratio"] > 0 and 0 <= r["spread_share"] <= 1
        # every generated frame counts: the overall accuracy is the mean over frames
        assert r["object_accuracy"] == pytest.approx(sum(r["accuracy_per_frame"]) / 8, abs=1e-6)
        assert all(0 <= v <= 1 for v in r["accuracy_per_object"] + [r["one_step_accuracy"]])
        assert r["excess"] == pytest.approx(r["es_ratio"], rel=1e-3)  # the deterministic oracle's ES is 0
    assert report["oracle"]["oracle_es"] < 1e-4 and report["oracle"]["oracle_mean_es"] < 1e-4
    for ball in ("ball_1", "ball_2"):  # one-step predictions: 3 contexts x 8 frames, every one counted
        distances = report["ball_distances"][ball]
        assert sum(distances["to_truth"]) == sum(distances["to_previous"]) == 24
    # Fresh episodes of another seed: one 64-frame episode holds 5 windows of 12 frames, so 50 asked -> 5.
    fresh = rollout_errors.main(
        [str(tmp_path / "model.ckpt"), "--fresh-episodes", "1", "--contexts", "50", "--samples", "2"]
        + ["--steps", "1", "--threads", "1", "--output", str(tmp_path / "fresh.json")]
        + ["--world", "stochastic"]
    )
    assert fresh["contexts"] == 5
    assert fresh["oracle"]["oracle_es"] > 0.1 and "excess" in fresh["k"][1]  # an uncertain future


def test_run_all_smoke_writes_a_summary(tmp_path):
    run_all.main(["--smoke", "--results", str(tmp_path)])
    summary = read(tmp_path / "summary.json")
    assert {row["benchmark"] for row in summary["rows"]} >= {"train_step", "scaling", "quality", "gpu"}
    assert all((tmp_path / f"{name}.json").exists() for name in run_all.BENCHMARKS)


@pytest.mark.parametrize(
    "name",
    [
        "run_all",
        "train_step",
        "rollout_speed",
        "scaling",
        "gpu",
        "quality",
        "learning",
        "rollout_errors",
        "device_run",
    ],
)
def test_benchmarks_run_as_modules(name):
    """``python -m benchmarks.<name>`` from the repository root: a package, no ``sys.path`` edits."""
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--help"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "usage" in result.stdout, result.stderr[-2000:]
    assert "sys.path" not in (repo / "benchmarks" / f"{name}.py").read_text()


@pytest.mark.slow
def test_device_run_smoke_runs_every_stage_and_writes_its_figures(tmp_path):
    """The device run's plumbing on CPU: every stage in its own process, the JSON after each, the logs (about
    30 s of CPU: six interpreters start, one of them the trainer's CLI)."""
    report = device_run.main(["--smoke", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    assert read(tmp_path / "out" / "device_run.json") == json.loads(json.dumps(report, default=str))
    assert list(report["stages"]) == list(device_run.STAGES) and report["not_run"] == []
    assert all((tmp_path / "out" / f"{name}.log").exists() for name in device_run.STAGES)
    tests, decode, mfu, quick = (report["stages"][name] for name in device_run.STAGES)
    assert tests["returncode"] == 0 and tests["counts"]["skipped"] > 0 and tests["failures"] == []
    assert decode["returncode"] == 0 and decode["cached_vs_uncached"]["equal"]
    for variant in ("eager", "compiled"):  # compiled: dynamo traced the decode step as one graph
        step = decode["steps"]["2"][variant]
        assert step["error"] < 1e-4 and step["k4"]["ms_per_frame"] == pytest.approx(5 * step["step_ms"])
    ring = decode["ring"]["2"]  # the StaticKVCache ring at advancing positions
    assert ring["error"] < 1e-4 and all(ring[f"k{k}"]["frames_per_s"] > 0 for k in (1, 2, 4))
    assert [(r["batch"], r["k"]) for r in decode["rollouts"]] == [(2, 1), (2, 2), (2, 4)]
    assert mfu["returncode"] == 0 and mfu["batch_2"]["mfu_vs_measured_peak"] > 0
    assert quick["attempts"][0]["returncode"] == 0 and quick["global_step"] == 4  # the smoke overlay's steps
    fresh = quick["fresh_contexts"]
    assert fresh["contexts"] == 5 and 0 <= fresh["k"]["1"]["object_accuracy"] <= 1


def test_device_run_parses_pytest_and_stops_a_stage_at_its_cap(tmp_path):
    text = "..s\nFAILED tests/test_cuda.py::test_a - boom\nERROR tests/t.py::b\n"
    text += "1 failed, 2 passed, 1 skipped, 1 error in 3.2s"
    assert device_run.pytest_counts(text) == {
        "counts": {"failed": 1, "passed": 2, "skipped": 1, "errors": 1},
        "complete": True,
        "failures": ["tests/test_cuda.py::test_a", "tests/t.py::b"],
    }
    stopped = (
        "tests/a.py::x PASSED [ 10%]\ntests/a.py::y[2] FAILED [ 20%]\ntests/b.py::z SKIPPED (no GPU) [ 30%]\n"
    )
    assert device_run.pytest_counts(stopped) == {  # stopped at the cap: no summary, the per-test lines
        "counts": {"passed": 1, "failed": 1, "skipped": 1},
        "complete": False,
        "failures": ["tests/a.py::y[2]"],
    }
    # the whole process group goes at the cap: a child that outlives the shell would hold the pipe open
    result = device_run.run_capped(["sh", "-c", "sleep 30 & sleep 30"], 1.0, tmp_path / "log")
    assert result["timed_out"] and result["seconds"] < 10
    report = device_run.main(["--smoke", "--budget", "0", "--out", str(tmp_path / "out")])
    assert report["stages"] == {} and report["not_run"] == list(device_run.STAGES)


def test_fitted_steps_fill_the_time_left():
    # 100 steps done at 0.1 s each, 90 s left, the last 10 % of steps twice as long: 909 steps in all
    total = fit_to_time.fitted_steps(100, 0.1, 90.0, 0.1, 2.0)
    assert total == 909 and (0.9 * 909 - 100) * 0.1 + 0.1 * 909 * 0.2 == pytest.approx(90.0, abs=0.1)
    assert fit_to_time.fitted_steps(100, 1.0, 10.0, 0.9, 2.0) == 105  # inside the bootstrap phase already


def test_fit_to_time_rescales_the_schedule_of_a_run(tmp_path):
    """A run of the tiny quickstart with room for 10,000 steps ends where FitToTime set its schedule, with
    the cosine, the bootstrap warm-up and the validation interval at the config's shares."""
    from dreamer_dynamics.cli import DynamicsCLI

    args = [
        *tiny_quickstart(tmp_path),
        "--trainer.max_steps=10000",
        "--trainer.val_check_interval=5000",
        "--model.objective.bootstrap_warmup_steps=9000",
    ]
    cli = DynamicsCLI(args=args, run=False)
    callback = fit_to_time.FitToTime(seconds=4.0, probe_steps=6)
    cli.trainer.callbacks.append(callback)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    total = callback.fitted["max_steps"]
    assert 6 < total < 10000 and cli.trainer.global_step == total
    assert cli.model.objective.bootstrap_warmup_steps == round(0.9 * total)
    assert cli.trainer.val_check_batch == round(0.5 * total)
    assert cli.trainer.lr_scheduler_configs[0].scheduler.total_steps == total
