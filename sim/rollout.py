"""The one rollout loop: a chunk policy drives a vector env through a given list of episodes.

Evaluation, the scripted expert's rollouts and demo collection all run `run_episodes`; an
`Evaluator` keeps its vector env (and the renderers' GL contexts) alive across evaluations.

Episodes are named by their seeds: the env resets with the seed, and the policy's denoising
noise comes from a generator reseeded with it at the episode's start, so neither depends on
the other envs. A run is reproducible for a given number of envs (any worker count); the
scripted expert's episodes are a function of their seeds alone. A learned policy's episodes
are too, up to float32 rounding: batched matmuls round a row differently with the batch's size
(measured ~1e-5 on the state policy), and one_leg's contacts amplify that, so the same seed can
end differently at another env count while success rates agree statistically.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from sim.api import ChunkPolicy, VectorEnv
from sim.chunk import ChunkStep

MILESTONE_PREFIX = "milestones/"
# on_chunk(obs, chunk, step, active) -> True to stop: obs are the (N, To, ...) histories the
# chunk was computed from, `active` the envs that executed it.
ChunkCallback = Callable[[dict[str, np.ndarray], np.ndarray, ChunkStep, np.ndarray], "bool | None"]


@dataclass
class EpisodeResult:
    seed: int
    env: int
    success: bool
    length: int
    episode_return: float
    diverged: bool
    milestones: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RolloutResult:
    episodes: list[EpisodeResult]
    env_steps: int
    wall_s: float

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else float("nan")

    @property
    def milestone_rates(self) -> dict[str, float]:
        names = list(self.episodes[0].milestones) if self.episodes else []
        return {m: float(np.mean([e.milestones[m] for e in self.episodes])) for m in names}

    @property
    def mean_length(self) -> float:
        return float(np.mean([e.length for e in self.episodes])) if self.episodes else float("nan")

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.wall_s if self.wall_s > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """Plain-python figures for summary.json files and logs."""
        succ = [e.length for e in self.episodes if e.success]
        return {"success_rate": self.success_rate, "milestone_rates": self.milestone_rates,
                "mean_length": self.mean_length, "mean_success_length": float(np.mean(succ)) if succ else None,
                "n_episodes": len(self.episodes), "diverged": int(sum(e.diverged for e in self.episodes)),
                "env_steps": self.env_steps, "wall_s": self.wall_s, "env_steps_per_s": self.env_steps_per_s,
                "episodes": [e.to_dict() for e in self.episodes]}


def _episode(step: ChunkStep, i: int, seed: int) -> EpisodeResult:
    inf = step.infos
    return EpisodeResult(
        seed=int(seed), env=int(i), success=bool(inf["success"][i]), length=int(inf["episode_length"][i]),
        episode_return=float(inf["episode_return"][i]), diverged=bool(inf["diverged"][i]),
        milestones={k[len(MILESTONE_PREFIX):]: bool(v[i]) for k, v in inf.items() if k.startswith(MILESTONE_PREFIX)})


def _seed_source(seeds: Iterable[int]) -> Callable[[], int]:
    it: Iterator[int] = iter(seeds)

    def take() -> int:
        s = next(it, None)
        return -1 if s is None else int(s)

    return take


def run_episodes(envs: VectorEnv, policy: ChunkPolicy, seeds: Iterable[int], *, n_episodes: int | None = None,
                 on_chunk: ChunkCallback | None = None, act_kwargs: Mapping[str, Any] | None = None,
                 per_episode_noise: bool = True, progress: bool = False, desc: str = "episodes") -> RolloutResult:
    """Run one episode per seed of `seeds` (or the first `n_episodes`, or until `on_chunk`
    returns True) with `policy`, all envs querying it at once for their next chunks.

    An env whose episode ends takes the next seed; when the seeds run out, envs go idle (they
    are not stepped). `act_kwargs` go to `policy.act` (e.g. DDIM steps).
    """
    from tqdm import tqdm

    if envs.obs_history != policy.obs_history:
        raise ValueError(f"the envs keep {envs.obs_history} observations, the policy reads {policy.obs_history}")
    n = envs.num_envs
    take = _seed_source(seeds if n_episodes is None else itertools.islice(seeds, n_episodes))
    current = np.array([take() for _ in range(n)], dtype=np.int64)
    active = current >= 0
    if not active.any():
        return RolloutResult([], 0, 0.0)
    reserved = np.array([take() if active[i] else -1 for i in range(n)], dtype=np.int64)
    generators = _generators(n) if per_episode_noise else None
    obs, _ = envs.reset(seeds=np.where(active, current, 0).tolist())
    _begin(policy, generators, active, current)
    results: list[EpisodeResult] = []
    env_steps, t0 = 0, time.perf_counter()
    kwargs = dict(act_kwargs or {})
    total = n_episodes if n_episodes is not None else len(seeds) if hasattr(seeds, "__len__") else None
    bar = tqdm(total=total, desc=desc, unit="ep", disable=not progress, leave=False)
    try:
        while active.any():
            chunk = np.asarray(policy.act({k: obs[k] for k in policy.obs_keys}, generator=generators, **kwargs))
            chunk = chunk[:, : policy.act_steps]
            step = envs.step(chunk, active=active, reset_seeds=reserved)
            env_steps += int(step.infos["executed"].sum())
            stop = bool(on_chunk(obs, chunk, step, active.copy())) if on_chunk is not None else False
            done = np.flatnonzero(step.infos["done"] & active)
            started = np.zeros(n, dtype=bool)
            for i in done:
                results.append(_episode(step, i, current[i]))
                bar.update(1)
                if reserved[i] >= 0:
                    current[i], reserved[i] = reserved[i], take()
                    started[i] = True
                else:
                    active[i] = False
            if started.any():
                _begin(policy, generators, started, current)
            if done.size and progress:
                bar.set_postfix(success=f"{np.mean([r.success for r in results]):.2f}")
            obs = step.obs
            if stop or (n_episodes is not None and len(results) >= n_episodes):
                break
    finally:
        bar.close()
    return RolloutResult(results, env_steps, time.perf_counter() - t0)


def _generators(n: int) -> list[Any]:
    import torch

    return [torch.Generator() for _ in range(n)]


def _begin(policy: ChunkPolicy, generators: list[Any] | None, mask: np.ndarray, seeds: np.ndarray) -> None:
    if generators is not None:
        for i in np.flatnonzero(mask):
            generators[i].manual_seed(int(seeds[i]))
    begin = getattr(policy, "begin_episodes", None)
    if begin is not None:
        begin(mask.copy(), seeds.copy())


class Evaluator:
    """Evaluates policies on fixed seeds in envs built once and kept for every evaluation.

    `make_envs(obs_history)` builds the vector env (e.g. `functools.partial(sim.make, cfg, 8)`);
    it is called again only if a policy needs a different history length.
    """

    def __init__(self, make_envs: Callable[[int], VectorEnv]):
        self._make_envs = make_envs
        self.envs: VectorEnv | None = None

    def _envs_for(self, obs_history: int) -> VectorEnv:
        if self.envs is None or self.envs.obs_history != obs_history:
            self.close()
            self.envs = self._make_envs(obs_history)
        return self.envs

    def run(self, policy: ChunkPolicy, seeds: Sequence[int], *, video_dir: str | Path | None = None,
            video_episodes: int = 1, progress: bool = False, act_kwargs: Mapping[str, Any] | None = None,
            desc: str = "eval") -> RolloutResult:
        envs = self._envs_for(policy.obs_history)
        if video_dir is not None and video_episodes > 0:
            envs.call("start_video", str(video_dir), "policy", int(video_episodes))
        try:
            return run_episodes(envs, policy, list(seeds), act_kwargs=act_kwargs, progress=progress, desc=desc)
        finally:
            if video_dir is not None and video_episodes > 0:
                envs.call("stop_video")

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
