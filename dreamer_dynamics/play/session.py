"""One page's game: a context drawn from the dataset, a rollout stepper, and the recorded episode to replay.

A session holds the KV cache and the rest of the drawn episode (for replay), never the generated frames. One
model step runs at a time per session (its lock); ``Sessions`` drops sessions idle for ``timeout`` seconds
and keeps at most ``max_sessions``.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from typing import Any

import numpy as np
import torch

from dreamer_dynamics.model import RolloutStepper

from .world import World

REPLAY_FRAMES = 48  # recorded frames after a drawn context, where the episode is long enough


def encode_frames(frames: np.ndarray) -> list[str]:
    """Frames [T, H, W, C] in [0, 1] -> base64 of their uint8 bytes (row-major H, W, C), one per frame."""
    pixels = np.clip(np.rint(np.asarray(frames) * 255.0), 0, 255).astype(np.uint8)
    return [base64.b64encode(np.ascontiguousarray(f).tobytes()).decode("ascii") for f in pixels]


class Session:
    """A rollout from a context drawn from the dataset; ``step`` takes the held action or the recorded one."""

    def __init__(self, world: World, seed: int) -> None:
        self.world, self.lock = world, threading.Lock()
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_used = time.monotonic()
        self.stepper: RolloutStepper | None = None
        self.replay = False
        self.episode: tuple[int, int] = (0, 0)
        self.truth: dict[str, np.ndarray] = {}  # the recorded frames after the context (latents, actions)
        self.frames = 0  # frames generated since the context

    def new_context(self, replay: bool, num_steps: int) -> dict[str, Any]:
        """Draw an episode window, prime the stepper with its first context_frames frames."""
        world, dataset = self.world, self.world.dataset
        ctx = world.context_frames
        lengths = dataset.episode_lengths
        index = int(self.rng.choice(np.flatnonzero(lengths > ctx)))
        start = int(self.rng.integers(0, max(1, lengths[index] - ctx - REPLAY_FRAMES)))  # long replays
        window = dataset.window(index, start, int(lengths[index]) - start)
        latents = torch.from_numpy(window["latents"])  # (T, N_b, D_b) dataset units
        acts = {
            k: torch.from_numpy(window[k])[None, :ctx]
            for k in ("actions_discrete", "actions_continuous")
            if k in window
        }
        # each context's noise stream starts from the session's seed stream, not from wherever the frames
        # generated before it (as many as time allowed) left it: a replay repeats exactly
        self.generator.manual_seed(int(self.rng.integers(2**62)))
        with torch.inference_mode():  # the cache holds inference tensors: every step runs in this mode too
            self.stepper = RolloutStepper(
                world.model,
                world.to_model(latents[None, :ctx]),
                num_steps=num_steps,
                context_noise=world.context_noise,
                generator=self.generator,
                **acts,
            )
        self.truth = {k: v[ctx:] for k, v in window.items()}
        self.replay, self.episode, self.frames = replay, (index, start), 0
        return {
            "episode": index,
            "start": start,
            "context": encode_frames(world.decode(window["latents"][:ctx])),
            "replay_frames": int(len(self.truth["latents"])),
        }

    def step(self, action: dict[str, Any], num_steps: int) -> dict[str, Any]:
        """Generate the next frame with `action` ({"discrete": [...], "continuous": [...]}) or, in replay,
        with the recorded action; returns the decoded frame (and the true one in replay)."""
        world, stepper = self.world, self.stepper
        truth = None
        if self.replay:
            if self.frames >= len(self.truth["latents"]):
                return {"done": True}
            truth = world.decode(self.truth["latents"][self.frames : self.frames + 1])
            action = {
                "discrete": self.truth["actions_discrete"][self.frames].tolist()
                if "actions_discrete" in self.truth
                else [],
                "continuous": self.truth["actions_continuous"][self.frames].tolist()
                if "actions_continuous" in self.truth
                else [],
            }
        discrete, continuous = self.action_tensors(action)
        stepper.num_steps = num_steps
        start = time.perf_counter()
        with torch.inference_mode():
            frame = stepper.step(actions_discrete=discrete, actions_continuous=continuous)  # (1, N_b, D_b)
            pixels = world.decode(world.to_data(frame).numpy())  # (1, H, W, C)
        self.frames += 1
        return {
            "frame": encode_frames(pixels)[0],
            "truth": None if truth is None else encode_frames(truth)[0],
            "t": self.frames,
            "k": num_steps,
            "action": action,
            "step_ms": 1000.0 * (time.perf_counter() - start),
            "done": False,
        }

    def action_tensors(self, action: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(discrete (1, n) long, continuous (1, m)) from the page's lists, checked against the spec."""
        cfg = self.world.model.config
        discrete = continuous = None
        if cfg.num_discrete_actions:
            ids = [int(a) for a in action.get("discrete") or []]
            if len(ids) != len(cfg.num_discrete_actions) or not all(
                0 <= a < n for a, n in zip(ids, cfg.num_discrete_actions)
            ):
                raise ValueError(
                    f"discrete action {ids} outside the classes {list(cfg.num_discrete_actions)}"
                )
            discrete = torch.tensor([ids], dtype=torch.long)
        if cfg.num_continuous_actions:
            values = [float(a) for a in action.get("continuous") or []]
            if len(values) != cfg.num_continuous_actions or not np.isfinite(values).all():
                raise ValueError(
                    f"continuous action {values}: need {cfg.num_continuous_actions} finite values"
                )
            continuous = torch.tensor([values], dtype=torch.float32)
        return discrete, continuous


class Sessions:
    """Sessions by id; idle ones expire after `timeout` s; past `max_sessions` the least recent goes."""

    def __init__(
        self, world: World, timeout: float = 600.0, max_sessions: int = 16, seed: int | None = None
    ) -> None:
        self.world, self.timeout, self.max_sessions = world, timeout, max_sessions
        self.lock = threading.Lock()
        self.sessions: dict[str, Session] = {}
        # session n's seed: from (seed, n) when a seed is given, so a served page repeats exactly; else random
        self.seeds = np.random.SeedSequence(seed if seed is not None else secrets.randbits(64))

    def get(self, session_id: str | None) -> tuple[str, Session]:
        """The session `session_id`, or a new one (with a new id) if it is unknown or expired."""
        now = time.monotonic()
        with self.lock:
            for key in [k for k, s in self.sessions.items() if now - s.last_used > self.timeout]:
                del self.sessions[key]
            if session_id not in self.sessions:
                while len(self.sessions) >= self.max_sessions:
                    del self.sessions[min(self.sessions, key=lambda k: self.sessions[k].last_used)]
                session_id = secrets.token_hex(8)
                seed = int(self.seeds.spawn(1)[0].generate_state(1)[0])
                self.sessions[session_id] = Session(self.world, seed)
            session = self.sessions[session_id]
            session.last_used = now
            return session_id, session
