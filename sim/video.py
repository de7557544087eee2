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
    ('front', 'wrist' or 'both' side by side), once per control step. `start_video` /
    `stop_video` (reachable through a vector env's `call`) point a long-lived env at a new
    directory, e.g. one per evaluation; a recorder built with `enabled=False` ignores them, so
    a vector env can call them on every env and only env 0 records.
    """

    def __init__(self, env: gym.Env, directory: str | Path | None = None, prefix: str = "rollout",
                 episodes: int = 1, camera: str = "front", image_hw: tuple[int, int] = (240, 320), fps: int = 20,
                 enabled: bool = True):
        super().__init__(env)
        self.enabled = enabled
        self.directory = Path(directory) if directory is not None else None
        self.prefix, self.episodes, self.camera = prefix, episodes if directory is not None else 0, camera
        self.image_hw, self.fps = tuple(image_hw), fps
        self.episode = -1
        self.frames: list[np.ndarray] = []

    def start_video(self, directory: str | Path, prefix: str = "rollout", episodes: int = 1) -> None:
        """Record the next `episodes` episodes (from the next reset) into `directory`."""
        if not self.enabled:
            return
        self._flush()
        self.directory, self.prefix, self.episodes, self.episode = Path(directory), prefix, int(episodes), -1

    def stop_video(self) -> None:
        if self.enabled:
            self._flush()
            self.episodes = 0

    def _frame(self) -> np.ndarray:
        env = self.env.unwrapped
        cams = ("front", "wrist") if self.camera == "both" else (self.camera,)
        return np.concatenate([env.render(camera=c, image_hw=self.image_hw) for c in cams], axis=1)

    def _recording(self) -> bool:
        return self.enabled and self.directory is not None and self.episode < self.episodes

    def reset(self, **kwargs):
        self._flush()
        obs, info = self.env.reset(**kwargs)
        self.episode += 1
        if self._recording():
            self.frames = [self._frame()]
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._recording() and self.frames:
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


def record_first_env(i: int, env: gym.Env, directory: str | Path | None = None, prefix: str = "rollout",
                     episodes: int = 1, camera: str = "front", image_hw: tuple[int, int] = (240, 320),
                     fps: int = 20) -> gym.Env:
    """Vector-env `wrap` hook (pass with functools.partial): every env gets a recorder, env 0's
    records (the first `episodes` episodes into `directory`, or from `start_video` on)."""
    return VideoRecorder(env, directory if i == 0 else None, prefix=prefix, episodes=episodes, camera=camera,
                         image_hw=image_hw, fps=fps, enabled=i == 0)
