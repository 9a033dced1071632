"""Curves read back from a run's TensorBoard event files (what a user sees in TensorBoard, nothing extra)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

Scalars = dict[str, list[tuple[int, float, float]]]  # tag -> [(step, wall_time, value)]


def read_scalars(root: Path) -> Scalars:
    """Every scalar of the newest event file under ``root``."""
    files = sorted(Path(root).rglob("events.out.tfevents*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file under {root}")
    events = EventAccumulator(str(files[-1]), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.wall_time, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def training_seconds(train_events: list[tuple[int, float, float]]) -> Callable[[int], float]:
    """step -> wall-clock seconds spent training up to that step, validation pauses excluded.

    Training events come every ``log_every_n_steps``; a gap much longer than the typical one holds a
    validation and counts as one typical gap. The time before the first event is extrapolated from the typical
    step time.
    """
    steps = [s for s, _, _ in train_events]
    times = [t for _, t, _ in train_events]
    if len(steps) < 2:
        return lambda step: 0.0
    per_step = [
        (t1 - t0) / (s1 - s0) for s0, s1, t0, t1 in zip(steps, steps[1:], times, times[1:]) if s1 > s0
    ]
    typical = statistics.median(per_step)
    elapsed = [steps[0] * typical]
    for s0, s1, t0, t1 in zip(steps, steps[1:], times, times[1:]):
        gap = t1 - t0
        elapsed.append(elapsed[-1] + (gap if gap <= 3 * typical * (s1 - s0) else typical * (s1 - s0)))

    def at(step: int) -> float:
        index = max((i for i, s in enumerate(steps) if s <= step), default=0)
        return elapsed[index] + (step - steps[index]) * typical

    return at
