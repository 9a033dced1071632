"""The built-in procedural environment: a controllable sprite and autonomous bouncing balls on a small canvas.

The dynamics depend on the actions twice, so that an action-conditioned model beats copying the last frame:
the sprite moves one pixel per step in the chosen direction, and a ball that would hit the sprite bounces off
it. Everything is integer arithmetic seeded from one number, so episodes are reproducible bit for bit.

With ``turn_probability`` > 0 the world is stochastic (docs/data.md): each step each ball turns with that
probability, redrawing its velocity uniformly among the 4 diagonals (it may keep its own), before the walls
and the sprite bounce it; a turning ball at a wall thus leaves in a random allowed direction. The draws come
from the environment's own generator, seeded from the episode seed apart from the layout, so an episode is
still replayed exactly from (seed, actions); with 0 nothing is drawn and episodes are the deterministic ones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ACTIONS = ("noop", "up", "down", "left", "right")  # discrete action ids 0..4
_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])  # (row, col) displacement per action
_BACKGROUND = np.array([0.08, 0.10, 0.20], dtype=np.float32)
_SPRITE_COLOUR = np.array([1.0, 0.85, 0.2], dtype=np.float32)
_BALL_COLOURS = np.array(
    [[0.9, 0.2, 0.2], [0.2, 0.8, 0.9], [0.4, 0.9, 0.3], [0.8, 0.4, 0.9]], dtype=np.float32
)


@dataclass
class ToyEnvConfig:
    """Size and population of the toy world."""

    image_size: int = 16  # frames are image_size x image_size RGB
    sprite_size: int = 3  # side of the controllable square
    num_balls: int = 2  # autonomous objects moving diagonally and bouncing off walls and the sprite
    ball_size: int = 2  # side of each ball
    turn_probability: float = (
        0.0  # chance per step that a ball redraws its diagonal velocity (0: deterministic)
    )


class ToyEnv:
    """Gym-like: ``reset(seed) -> frame``, ``step(action) -> frame``; frames float32 [H, W, 3] in [0, 1]."""

    num_actions = len(ACTIONS)

    def __init__(self, config: ToyEnvConfig | None = None):
        self.config = config or ToyEnvConfig()
        c = self.config
        if c.num_balls > len(_BALL_COLOURS):
            raise ValueError(f"num_balls must be <= {len(_BALL_COLOURS)}")
        if c.image_size < 2 * max(c.sprite_size, c.ball_size) + 2:
            raise ValueError(f"image_size {c.image_size} too small for the sprites")
        if not 0.0 <= c.turn_probability <= 1.0:
            raise ValueError(f"turn_probability must be in [0, 1], got {c.turn_probability}")
        self.sprite = np.zeros(2, dtype=np.int64)  # (row, col) of the sprite's top-left corner
        self.balls = np.zeros((c.num_balls, 2), dtype=np.int64)  # (K, 2) top-left corners
        self.velocities = np.ones((c.num_balls, 2), dtype=np.int64)  # (K, 2) entries in {-1, +1}
        self.rng = np.random.default_rng([0, 2])  # the turns' draws; reset seeds it from the episode seed

    def reset(self, seed: int) -> np.ndarray:
        c, rng = self.config, np.random.default_rng(seed)
        self.sprite = rng.integers(0, c.image_size - c.sprite_size + 1, size=2)
        self.balls = rng.integers(0, c.image_size - c.ball_size + 1, size=(c.num_balls, 2))
        self.velocities = rng.choice(np.array([-1, 1]), size=(c.num_balls, 2))
        self.rng = np.random.default_rng([seed, 2])  # its own stream: the layout and actions use others
        return self.render()

    def step(self, action: int) -> np.ndarray:
        """Apply `action` (an id in ACTIONS); `actions[t]` in a dataset is the action passed to the step
        that produced frame t."""
        if not 0 <= action < self.num_actions:
            raise ValueError(f"action {action} outside [0, {self.num_actions})")
        c = self.config
        self.sprite = np.clip(self.sprite + _MOVES[action], 0, c.image_size - c.sprite_size)
        limit = c.image_size - c.ball_size
        for k in range(c.num_balls):
            if c.turn_probability > 0 and self.rng.random() < c.turn_probability:
                self.velocities[k] = 2 * self.rng.integers(0, 2, size=2) - 1  # one of the 4 diagonals
            proposal = self.balls[k] + self.velocities[k]
            for axis in range(2):  # bounce off the walls
                if not 0 <= proposal[axis] <= limit:
                    self.velocities[k, axis] *= -1
                    proposal[axis] = self.balls[k, axis] + self.velocities[k, axis]
            if self._hits_sprite(proposal):  # bounce off the sprite: the action changes the balls' paths
                self.velocities[k] *= -1
                proposal = np.clip(self.balls[k] + self.velocities[k], 0, limit)
            self.balls[k] = proposal
        return self.render()

    def fork(self, rng: np.random.Generator) -> ToyEnv:
        """A copy in the same hidden state that draws its turns from ``rng`` (the oracle's fresh draws)."""
        env = copy.copy(self)
        env.sprite, env.balls, env.velocities = self.sprite.copy(), self.balls.copy(), self.velocities.copy()
        env.rng = rng
        return env

    def _hits_sprite(self, ball: np.ndarray) -> bool:
        c = self.config
        return bool(np.all(ball < self.sprite + c.sprite_size) and np.all(self.sprite < ball + c.ball_size))

    def render(self) -> np.ndarray:
        c = self.config
        frame = np.broadcast_to(_BACKGROUND, (c.image_size, c.image_size, 3)).copy()
        for k, (r, col) in enumerate(self.balls):
            frame[r : r + c.ball_size, col : col + c.ball_size] = _BALL_COLOURS[k]
        r, col = self.sprite
        frame[r : r + c.sprite_size, col : col + c.sprite_size] = _SPRITE_COLOUR
        return frame


def sticky_random_actions(
    length: int, num_actions: int, rng: np.random.Generator, repeat: float = 0.75
) -> np.ndarray:
    """A random policy that repeats its previous action with probability `repeat` (coherent motion)."""
    actions = np.empty(length, dtype=np.int64)
    actions[0] = rng.integers(num_actions)
    for t in range(1, length):
        actions[t] = actions[t - 1] if rng.random() < repeat else rng.integers(num_actions)
    return actions


def episode_actions(seed: int, length: int) -> np.ndarray:
    """The actions [T] of episode `seed`'s first `length` frames; actions[0] = -1 (no cause). A prefix of a
    longer episode's: the policy draws them one after the other."""
    actions = np.full(length, -1, dtype=np.int64)
    if length > 1:
        actions[1:] = sticky_random_actions(length - 1, ToyEnv.num_actions, np.random.default_rng([seed, 1]))
    return actions


def rollout_episode(env: ToyEnv, seed: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """One episode of `length` frames [T, H, W, 3] and actions [T]; actions[0] = -1 (no cause)."""
    frames = [env.reset(seed)]
    actions = episode_actions(seed, length)
    for t in range(1, length):
        frames.append(env.step(int(actions[t])))
    return np.stack(frames), actions


def object_colours(config: ToyEnvConfig) -> tuple[np.ndarray, list[int]]:
    """Colours [1 + num_balls, 3] and sides of the objects: the sprite first, then each ball."""
    colours = np.concatenate([_SPRITE_COLOUR[None], _BALL_COLOURS[: config.num_balls]])
    return colours, [config.sprite_size] + [config.ball_size] * config.num_balls


def locate_objects(frames: torch.Tensor, config: ToyEnvConfig, temperature: float = 0.02) -> torch.Tensor:
    """Top-left (row, col) of the sprite and of each ball: frames [..., H, W, 3] -> long [..., 1 + balls, 2].

    Every pixel is softly assigned to the palette (background, sprite, balls) by colour, softmax of
    -||pixel - colour||^2 / temperature; an object sits where the box of its side holds most of its colour.
    Soft assignment keeps a blurred or noisy object findable near its centre of mass and never takes another
    object's pixels for it; on clean frames it recovers the true positions exactly unless an object is hidden
    (balls are drawn in order, the sprite last).
    """
    colours, sides = object_colours(config)
    palette = torch.as_tensor(np.concatenate([_BACKGROUND[None], colours]), dtype=torch.float32)
    x = frames.float()
    lead, (height, width) = x.shape[:-3], x.shape[-3:-1]
    x = x.reshape(-1, height, width, 3)  # (F, H, W, 3)
    distance = (x[..., None, :] - palette.to(x.device)).square().sum(-1)  # (F, H, W, 1 + objects)
    share = torch.softmax(-distance / temperature, dim=-1)
    positions = []
    for index, side in enumerate(sides, start=1):
        box = F.avg_pool2d(share[None, ..., index].transpose(0, 1), side, stride=1)[:, 0]  # (F, H-s+1, W-s+1)
        flat = box.flatten(1).argmax(1)
        positions.append(torch.stack((flat // box.shape[-1], flat % box.shape[-1]), -1))  # (F, 2)
    return torch.stack(positions, 1).reshape(*lead, len(sides), 2)
