"""Buffer steps of one or many running episodes and hand finished ones to an EpisodeWriter.

Used by the demo collector (scripted expert, teleoperation), policy rollouts and, later, the
real robot: the same writer, so every source produces the same dataset layout.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from data.episodes import EpisodeWriter


class EpisodeRecorder:
    """One episode at a time: `add(obs, action, reward)` per step, then `finish` or `discard`."""

    def __init__(self, writer: EpisodeWriter, obs_keys: list[str] | None = None):
        self.writer = writer
        self.obs_keys = obs_keys
        self.steps: list[dict[str, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, obs: Mapping[str, np.ndarray], action: np.ndarray, reward: float = 0.0) -> None:
        keys = self.obs_keys if self.obs_keys is not None else list(obs)
        step = {k: np.array(obs[k], copy=True) for k in keys}
        step["action"] = np.asarray(action, dtype=np.float32).copy()
        step["reward"] = np.asarray(reward, dtype=np.float32)
        self.steps.append(step)

    def discard(self) -> None:
        self.steps = []

    def finish(self, *, success: bool, source: str, seed: int = -1, **meta: Any) -> int | None:
        """Write the buffered episode (if any); returns its index in the dataset."""
        if not self.steps:
            return None
        frames = {k: np.stack([s[k] for s in self.steps]) for k in self.steps[0]}
        self.steps = []
        return self.writer.add_episode(frames, success=success, source=source, seed=seed, **meta)


class VectorRecorder:
    """One EpisodeRecorder per env of a vector env (batched observations and actions)."""

    def __init__(self, writer: EpisodeWriter, n_envs: int, obs_keys: list[str] | None = None):
        self.recorders = [EpisodeRecorder(writer, obs_keys) for _ in range(n_envs)]

    def add(self, obs: Mapping[str, np.ndarray], actions: np.ndarray, rewards: np.ndarray,
            rows: np.ndarray | None = None) -> None:
        """One step of every env (or of the envs where `rows` is True: the others did not step)."""
        for i, rec in enumerate(self.recorders):
            if rows is None or rows[i]:
                rec.add({k: v[i] for k, v in obs.items()}, actions[i], float(rewards[i]))

    def __getitem__(self, i: int) -> EpisodeRecorder:
        return self.recorders[i]
