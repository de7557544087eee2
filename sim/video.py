"""Record rollout videos from inside an env (works in vector-env worker processes)."""
from __future__ import annotations

import logging
from pathlib import Path

import gymnasium as gym
import numpy as np

log = logging.getLogger(__name__)


class VideoRecorder(gym.Wrapper):
    """Writes `<prefix>_ep<k>.mp4` for the first `episodes` episodes of the wrapped env.

    Frames are rendered at `image_hw` (larger than policy images) from `camera`
    ('front', 'wrist' or 'both' side by side), once per control step.
    """

    def __init__(self, env: gym.Env, directory: str | Path, prefix: str = "rollout", episodes: int = 1,
                 camera: str = "front", image_hw: tuple[int, int] = (240, 320), fps: int = 20):
        super().__init__(env)
        self.directory = Path(directory)
        self.prefix, self.episodes, self.camera = prefix, episodes, camera
        self.image_hw, self.fps = tuple(image_hw), fps
        self.episode = -1
        self.frames: list[np.ndarray] = []

    def _frame(self) -> np.ndarray:
        env = self.env.unwrapped
        cams = ("front", "wrist") if self.camera == "both" else (self.camera,)
        return np.concatenate([env.render(camera=c, image_hw=self.image_hw) for c in cams], axis=1)

    def reset(self, **kwargs):
        self._flush()
        obs, info = self.env.reset(**kwargs)
        self.episode += 1
        if self.episode < self.episodes:
            self.frames = [self._frame()]
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.episode < self.episodes:
            self.frames.append(self._frame())
            if terminated or truncated:
                self._flush(success=bool(info.get("success", False)))
        return obs, reward, terminated, truncated, info

    def _flush(self, success: bool | None = None) -> None:
        if not self.frames:
            return
        import imageio.v2 as imageio

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.prefix}_ep{self.episode}.mp4"
        # hold the last frame for a second so the outcome is visible
        frames = self.frames + [self.frames[-1]] * self.fps
        imageio.mimsave(path, frames, fps=self.fps, macro_block_size=1)
        log.info("wrote %s (%d frames, success=%s)", path, len(self.frames), success)
        self.frames = []

    def close(self):
        self._flush()
        super().close()


def record_first_env(i: int, env: gym.Env, directory: str | Path | None, prefix: str, episodes: int = 1,
                     camera: str = "front", image_hw: tuple[int, int] = (240, 320), fps: int = 20) -> gym.Env:
    """Vector-env `wrap` hook: record videos of env 0 only (pass with functools.partial)."""
    if i != 0 or directory is None or episodes <= 0:
        return env
    return VideoRecorder(env, directory, prefix=prefix, episodes=episodes, camera=camera, image_hw=image_hw, fps=fps)
