"""CPU vector environments: N gymnasium envs stepped by action chunks, in-process or in workers.

This is the `mujoco` backend's implementation of the vector-env protocol (`sim.vector.VectorEnv`);
a GPU backend implements the same protocol over batched worlds.

Why not gymnasium.vector.AsyncVectorEnv: it runs one process per env, while a MuJoCo env here
steps in a few ms but takes ~1 s and an EGL context to build, so we pack a contiguous slice
of envs into each of W workers. A whole action chunk travels to the workers in one message and
each worker runs `sim.chunk.execute_chunk` over its slice: one round trip per chunk instead of
one per action. The observation histories (N, To, ...) and the finished episodes' histories
live in `multiprocessing.shared_memory`, written by the workers in place; pipes carry only
commands, actions and (N,) arrays of rewards, flags and infos.

Semantics shared by `SyncVectorEnv` and `SharedMemoryVectorEnv` (one implementation,
`_EnvRunner`, runs in-process for the former and inside every worker for the latter):

* `reset(seed=s)` resets env i with `s + i`, `reset(seeds=[...])` with explicit per-env seeds;
  auto-resets use `reset_seeds[i]` passed to `step` when >= 0, else continue each env's own
  RNG, so a run depends on the seeds only, not on the worker count.
* Same-step auto-reset: when env i's episode ends inside a chunk, it executes no further
  actions of that chunk; the returned history already is its next episode's (first obs
  repeated), and `infos["final_obs"]` holds the finished episode's history.
* Infos are (N,) arrays. Per env they describe the last sub-step it executed, so for a
  finished env its final step: `success`, `milestones/<name>`, `diverged`, `episode_return`,
  `episode_length`, `episode_seed` (the episode the step belonged to), plus
  `next_episode_seed` (the episode the returned observation belongs to) and `executed`.
  Nested info dicts are flattened with '/'; non-numeric info values are not carried.
* A simulation that blows up (the env raises FloatingPointError, e.g. NaN state) ends that
  env's episode as truncated with `diverged=True` and a log line; the other envs go on.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import numbers
import os
import signal
import time
import traceback
import weakref
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import cloudpickle
import gymnasium as gym
import numpy as np

from data.history import ObsHistory
from sim.chunk import ChunkStep, StepOut, execute_chunk

log = logging.getLogger(__name__)

EnvFn = Callable[[], gym.Env]
ObsDict = dict[str, np.ndarray]
ArrayKey = tuple[str, str]  # ("history" | "final", observation key)

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# infos every env reports, whatever its own info dict holds
STANDARD_INFOS = {"success": False, "diverged": False, "episode_return": 0.0, "episode_length": 0,
                  "episode_seed": -1, "next_episode_seed": -1}


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Environment for spawned workers: numpy reads these at import, before our code runs."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    for k in _THREAD_VARS:
        os.environ.setdefault(k, "1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class VectorEnvError(RuntimeError):
    """An env (or the worker process running it) failed. `env_index` is None when unknown."""

    def __init__(self, message: str, env_index: int | None = None):
        super().__init__(message)
        self.env_index = env_index


# --- helpers shared by both vector envs and the workers --------------------------------------
@contextmanager
def _blame(index: int) -> Iterator[None]:
    """Tag any exception raised by env `index` with that index, so users know which env failed."""
    try:
        yield
    except VectorEnvError:
        raise
    except Exception as exc:
        raise VectorEnvError(f"env {index} raised {type(exc).__name__}: {exc}", env_index=index) from exc


def _build_envs(env_fns: Sequence[EnvFn], start: int) -> list[gym.Env]:
    """Call the factories; on failure close what was already built (renderers hold GL contexts)."""
    envs: list[gym.Env] = []
    try:
        for j, fn in enumerate(env_fns):
            with _blame(start + j):
                envs.append(fn())
    except BaseException:
        _close_envs(envs)
        raise
    return envs


def _close_envs(envs: Sequence[gym.Env]) -> None:
    for env in envs:
        try:
            env.close()
        except Exception:  # closing is best effort; the process may be going away anyway
            log.exception("closing %r failed", env)


def _common_spaces(envs: Sequence[gym.Env], start: int) -> tuple[gym.spaces.Dict, gym.spaces.Box, dict]:
    """Spaces and metadata of the first env, after checking every env agrees (buffers are shared)."""
    obs_space, act_space = envs[0].observation_space, envs[0].action_space
    for j, env in enumerate(envs[1:], start=1):
        if env.observation_space != obs_space or env.action_space != act_space:
            raise VectorEnvError(f"env {start + j} has different spaces than env {start}", env_index=start + j)
    _check_spaces(obs_space, act_space)
    return obs_space, act_space, dict(envs[0].metadata)


def _check_spaces(obs_space: gym.Space, act_space: gym.Space) -> None:
    if not isinstance(obs_space, gym.spaces.Dict) or not all(
            isinstance(s, gym.spaces.Box) for s in obs_space.spaces.values()):
        raise TypeError(f"vector envs need a Dict observation space of Boxes, got {obs_space}")
    if not isinstance(act_space, gym.spaces.Box):
        raise TypeError(f"vector envs need a Box action space, got {act_space}")


def _split(n_envs: int, n_workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) env slices, sizes differing by at most one."""
    sizes = [n_envs // n_workers + (w < n_envs % n_workers) for w in range(n_workers)]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


_SCALARS = (bool, int, float, np.bool_, np.integer, np.floating)  # concrete types: abc checks cost ~0.3 ms/step


def flatten_info(info: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'milestones': {'a': True}, 'steps': 3, 'label': 'x'} -> {'milestones/a': True, 'steps': 3}:
    numbers and bools only (the values that stack into arrays)."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, _SCALARS):
            out[f"{prefix}{key}"] = value
        elif isinstance(value, dict) or isinstance(value, Mapping):
            out.update(flatten_info(value, prefix=f"{prefix}{key}/"))
        elif isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "biuf":
            out[f"{prefix}{key}"] = value.item()
    return out


def _dtype_of(value: Any) -> np.dtype:
    if isinstance(value, (bool, np.bool_)):
        return np.dtype(bool)
    if isinstance(value, numbers.Integral):
        return np.dtype(np.int64)
    return np.dtype(np.float64)


def _fill_of(dtype: np.dtype) -> Any:
    return False if dtype == bool else 0 if dtype.kind == "i" else np.nan


def _concat_infos(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-worker info arrays -> (N,) arrays in env order (workers own contiguous slices)."""
    keys = list(dict.fromkeys(k for p in parts for k in p))
    out = {}
    for k in keys:
        arrays = [p[k] for p in parts if k in p]
        if len(arrays) == len(parts):
            out[k] = np.concatenate(arrays)
        else:  # a key only some workers saw (their envs never reported it): fill the rest
            dtype = arrays[0].dtype
            out[k] = np.concatenate([p[k] if k in p else np.full(len(next(iter(p.values()))), _fill_of(dtype), dtype)
                                     for p in parts])
    return out


class _StepReply(NamedTuple):
    """What a worker sends back for one chunk (small: no observations)."""

    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    infos: dict[str, np.ndarray]

    def pack(self) -> tuple:
        """One 2-D array per dtype instead of ~25 small arrays: pickling each array costs a few
        microseconds, which at one round trip per action was most of the IPC time."""
        groups: dict[str, list[tuple[str, np.ndarray]]] = {}
        items = [("__reward", self.reward), ("__terminated", self.terminated), ("__truncated", self.truncated),
                 *self.infos.items()]
        for key, value in items:
            groups.setdefault(value.dtype.str, []).append((key, value))
        return tuple((dtype, tuple(k for k, _ in kv), np.stack([v for _, v in kv])) for dtype, kv in groups.items())

    @staticmethod
    def unpack(packed: tuple) -> "_StepReply":
        flat = {k: arr[i] for _, keys, arr in packed for i, k in enumerate(keys)}
        return _StepReply(flat.pop("__reward"), flat.pop("__terminated"), flat.pop("__truncated"), flat)


# --- the episode logic: runs in-process (SyncVectorEnv) or in each worker --------------------
class _EnvRunner:
    """Steps a contiguous slice of envs with same-step auto-reset (a `sim.chunk.MaskedStepper`),
    keeping their observation histories in the given (n_local, To, ...) arrays."""

    def __init__(self, envs: list[gym.Env], start: int, history: ObsDict, final_history: ObsDict,
                 action_shape: tuple[int, ...]):
        self.envs, self.start = envs, start
        self.num_envs = len(envs)
        keys = list(history)
        self.history = ObsHistory(next(iter(history.values())).shape[1], keys, buffers=history)
        self.final_history = ObsHistory(self.history.n, keys, buffers=final_history)
        self.action_shape = action_shape
        self.returns = np.zeros(len(envs), dtype=np.float64)
        self.lengths = np.zeros(len(envs), dtype=np.int64)
        self.seeds = np.full(len(envs), -1, dtype=np.int64)
        self.latest = {k: np.zeros_like(v[:, 0]) for k, v in history.items()}  # (n_local, ...) newest obs
        self._groups: list | None = None
        self.info_keys: dict[str, np.dtype] = {k: _dtype_of(v) for k, v in STANDARD_INFOS.items()}

    # -- reset ---------------------------------------------------------------------------
    def reset(self, seeds: Sequence[int | None], options: dict | None) -> dict[str, np.ndarray]:
        infos = []
        for j, env in enumerate(self.envs):
            with _blame(self.start + j):
                obs, info = env.reset(seed=seeds[j], options=options)
                self._check_obs(obs)
            self.seeds[j] = self._episode_seed(info, seeds[j])
            for k in self.latest:
                self.latest[k][j] = obs[k]
            infos.append({**flatten_info(info), "episode_seed": int(self.seeds[j]),
                          "next_episode_seed": int(self.seeds[j])})
        self.history.reset(self.latest)
        self.returns[:] = 0.0
        self.lengths[:] = 0
        return self._stack(infos, np.ones(self.num_envs, dtype=bool))

    @staticmethod
    def _episode_seed(info: Mapping[str, Any], seed: int | None) -> int:
        value = info.get("episode_seed", seed)
        return -1 if value is None else int(value)

    def _check_obs(self, obs: Mapping[str, np.ndarray]) -> None:
        if obs.keys() != set(self.history.keys):
            raise KeyError(f"observation keys {sorted(obs)} do not match the observation space "
                           f"{sorted(self.history.keys)}")

    # -- the masked sub-step (sim.chunk.MaskedStepper) -------------------------------------
    def step_masked(self, actions: np.ndarray, active: np.ndarray, reset_seeds: np.ndarray) -> StepOut:
        n = self.num_envs
        reward = np.zeros(n, dtype=np.float32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        latest = self.latest  # the newest observation of every env, updated in place
        final: dict[str, np.ndarray] | None = None
        infos: list[dict[str, Any]] = [{} for _ in range(n)]
        for j in np.flatnonzero(active):
            obs, r, term, trunc, info = self._step_one(j, actions[j])
            reward[j], terminated[j], truncated[j] = r, term, trunc
            info["episode_seed"] = int(self.seeds[j])
            if term or trunc:
                if final is None:
                    final = {k: v.copy() for k, v in latest.items()}
                if obs is not None:  # None: diverged, the last finite observation stands in
                    for k in latest:
                        final[k][j] = obs[k]
                info["episode_return"], info["episode_length"] = float(self.returns[j]), int(self.lengths[j])
                seed = int(reset_seeds[j])
                with _blame(self.start + j):
                    obs, reset_info = self.envs[j].reset(seed=seed if seed >= 0 else None)
                self.seeds[j] = self._episode_seed(reset_info, seed if seed >= 0 else None)
                self.returns[j], self.lengths[j] = 0.0, 0
            info["next_episode_seed"] = int(self.seeds[j])
            if obs is not None:
                for k in latest:
                    latest[k][j] = obs[k]
            infos[j] = info
        return StepOut(latest, reward, terminated, truncated, latest if final is None else final,
                       self._stack(infos, active))

    def _step_one(self, j: int, action: np.ndarray) -> tuple[Mapping[str, np.ndarray] | None, float, bool, bool, dict]:
        env = self.envs[j]
        with _blame(self.start + j):
            try:
                # a copy: the env may keep the action
                obs, reward, terminated, truncated, info = env.step(action.reshape(self.action_shape).copy())
            except FloatingPointError as exc:
                log.warning("env %d diverged at step %d of episode (seed %d): %s; truncating the episode",
                            self.start + j, self.lengths[j] + 1, self.seeds[j], exc)
                self.lengths[j] += 1
                return None, 0.0, False, True, {"diverged": True}
            self._check_obs(obs)
        self.returns[j] += reward
        self.lengths[j] += 1
        return obs, float(reward), bool(terminated), bool(truncated), flatten_info(info)

    def _stack(self, infos: Sequence[Mapping[str, Any]], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Per-env info dicts -> (n_local,) arrays; rows not in `rows` (not stepped) hold defaults.
        One numpy call per dtype, not per key (this runs after every action)."""
        for info in infos:
            for k, v in info.items():
                if k not in self.info_keys:
                    self.info_keys[k] = _dtype_of(v)
                    self._groups = None
        if self._groups is None:
            groups: dict[np.dtype, list[tuple[str, Any]]] = {}
            for k, dtype in self.info_keys.items():
                groups.setdefault(dtype, []).append((k, STANDARD_INFOS.get(k, _fill_of(dtype))))
            self._groups = [(dtype, [k for k, _ in kd], kd, [d for _, d in kd]) for dtype, kd in groups.items()]
        out = {}
        for dtype, keys, kd, defaults in self._groups:
            table = np.array([[info.get(k, d) for k, d in kd] if rows[j] else defaults
                              for j, info in enumerate(infos)], dtype=dtype).reshape(len(infos), len(keys))
            for i, k in enumerate(keys):
                out[k] = table[:, i]
        return out

    # -- chunks ------------------------------------------------------------------------------
    def step_chunk(self, chunk: np.ndarray, active: np.ndarray, reset_seeds: np.ndarray) -> _StepReply:
        reward, terminated, truncated, infos = execute_chunk(self, self.history, self.final_history, chunk,
                                                             active, reset_seeds)
        for k, dtype in self.info_keys.items():  # keys of envs that did not step this chunk
            if k not in infos:
                infos[k] = np.full(self.num_envs, STANDARD_INFOS.get(k, _fill_of(dtype)), dtype=dtype)
        idle = infos["executed"] == 0
        infos["episode_seed"][idle] = infos["next_episode_seed"][idle] = self.seeds[idle]
        return _StepReply(reward, terminated, truncated, infos)

    def call(self, name: str, args: tuple, kwargs: dict) -> list[Any]:
        out = []
        for j, env in enumerate(self.envs):
            with _blame(self.start + j):
                attr = env.get_wrapper_attr(name)  # looks through gymnasium wrappers
                out.append(attr(*args, **kwargs) if callable(attr) else attr)
        return out

    def close(self) -> None:
        _close_envs(self.envs)
        self.envs = []


# --- the common front end ---------------------------------------------------------------------
class _VectorEnvBase:
    """Argument checking, result assembly and the public API; subclasses move the data around."""

    def __init__(self, num_envs: int, obs_space: gym.spaces.Dict, act_space: gym.spaces.Box, metadata: dict,
                 obs_history: int):
        if obs_history < 1:
            raise ValueError(f"obs_history must be >= 1, got {obs_history}")
        self.num_envs = num_envs
        self.obs_history = int(obs_history)
        self.device = "cpu"  # observations and actions are numpy arrays
        self.single_observation_space = obs_space
        self.single_action_space = act_space
        self.metadata = {**metadata, "autoreset_mode": "same_step"}
        self._act_dim = int(np.prod(act_space.shape))
        self._history = self._allocate("history")
        self._final_history = self._allocate("final")
        self._needs_reset = True

    def _allocate(self, group: str) -> ObsDict:
        return {k: self._make_array((group, k), (self.num_envs, self.obs_history, *s.shape), np.dtype(s.dtype))
                for k, s in self.single_observation_space.spaces.items()}

    # subclass hooks
    def _make_array(self, key: ArrayKey, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        raise NotImplementedError

    def _reset_envs(self, seeds: list[int | None], options: dict | None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _step_envs(self, chunk: np.ndarray, active: np.ndarray, reset_seeds: np.ndarray) -> _StepReply:
        raise NotImplementedError

    def _call_envs(self, name: str, args: tuple, kwargs: dict) -> list[Any]:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # public API
    def reset(self, seed: int | None = None, options: dict | None = None,
              seeds: Sequence[int] | None = None) -> tuple[ObsDict, dict[str, Any]]:
        """Reset every env: env i with `seed + i`, or with `seeds[i]`; returns copies of the
        (N, To, ...) histories (the first obs repeated) and the infos."""
        self._check_open()
        if seeds is not None:
            if len(seeds) != self.num_envs:
                raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
            per_env: list[int | None] = [int(s) for s in seeds]
        else:
            per_env = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
        self._needs_reset = True
        infos = self._reset_envs(per_env, options)
        self._needs_reset = False
        return self._copy(self._history), infos

    def step(self, actions: np.ndarray, active: np.ndarray | None = None,
             reset_seeds: np.ndarray | None = None) -> ChunkStep:
        """Execute a chunk (N, Ta, A) (or one action per env, (N, A)) on the envs where `active`.

        Returns a `ChunkStep` (obs histories, summed rewards, terminated, truncated, infos); see
        the module doc. `reset_seeds[i] >= 0` is the seed env i's next episode uses if its
        episode ends inside this chunk."""
        self._check_open()
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (after an env error the envs are out of sync)")
        chunk = self._check_actions(actions)
        active = np.ones(self.num_envs, bool) if active is None else np.asarray(active, dtype=bool).reshape(-1)
        reset_seeds = np.full(self.num_envs, -1, np.int64) if reset_seeds is None \
            else np.asarray(reset_seeds, dtype=np.int64).reshape(-1)
        if active.shape != (self.num_envs,) or reset_seeds.shape != (self.num_envs,):
            raise ValueError(f"active and reset_seeds need shape ({self.num_envs},)")
        try:
            reply = self._step_envs(chunk, active, reset_seeds)
        except VectorEnvError:
            self._needs_reset = True
            raise
        return self._assemble(reply)

    def call(self, name: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call method `name` (or read attribute `name`) on every env; results in env order.

        SharedMemoryVectorEnv returns pickled copies; SyncVectorEnv returns the objects themselves.
        """
        self._check_open()
        return self._call_envs(name, args, kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # internals
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"{type(self).__name__} is closed")

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float32)
        single = tuple(self.single_action_space.shape)
        if actions.shape in ((self.num_envs, *single), (self.num_envs, self._act_dim)):
            actions = actions.reshape(self.num_envs, 1, self._act_dim)
        if actions.ndim != 3 or actions.shape[0] != self.num_envs or actions.shape[2] != self._act_dim \
                or actions.shape[1] < 1:
            raise ValueError(f"actions must have shape ({self.num_envs}, {self._act_dim}) or "
                             f"({self.num_envs}, Ta, {self._act_dim}), got {actions.shape}")
        return actions

    @staticmethod
    def _copy(buffers: ObsDict) -> ObsDict:
        return {k: v.copy() for k, v in buffers.items()}

    def _assemble(self, reply: _StepReply) -> ChunkStep:
        done = reply.terminated | reply.truncated
        final_obs = {}
        for key, buf in self._final_history.items():
            final_obs[key] = np.zeros_like(buf)  # rows of envs that did not finish stay zero
            final_obs[key][done] = buf[done]
        infos: dict[str, Any] = dict(reply.infos)
        infos["done"] = done
        infos["final_obs"] = final_obs
        return ChunkStep(self._copy(self._history), reply.reward, reply.terminated, reply.truncated, infos)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_envs={self.num_envs}, obs_history={self.obs_history})"


class SyncVectorEnv(_VectorEnvBase):
    """All envs in this process, one after another: for debugging (pdb works) and n_workers=0.

    The envs share this process's numpy BLAS. Workers start theirs single-threaded; OpenBLAS
    started multi-threaded rounds the IK solves differently in the last bits (even when limited
    to one thread later), so in-process episodes match worker episodes bit for bit only when
    this process was started with OPENBLAS_NUM_THREADS=1."""

    def __init__(self, env_fns: Sequence[EnvFn], obs_history: int = 1):
        if not env_fns:
            raise ValueError("need at least one env factory")
        envs = _build_envs(env_fns, 0)
        try:
            super().__init__(len(envs), *_common_spaces(envs, 0), obs_history=obs_history)
        except BaseException:
            _close_envs(envs)
            raise
        self._runner = _EnvRunner(envs, 0, self._history, self._final_history, self.single_action_space.shape)
        self._closed = False

    def _make_array(self, key: ArrayKey, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def _reset_envs(self, seeds: list[int | None], options: dict | None) -> dict[str, np.ndarray]:
        return self._runner.reset(seeds, options)

    def _step_envs(self, chunk: np.ndarray, active: np.ndarray, reset_seeds: np.ndarray) -> _StepReply:
        return self._runner.step_chunk(chunk, active, reset_seeds)

    def _call_envs(self, name: str, args: tuple, kwargs: dict) -> list[Any]:
        return self._runner.call(name, args, kwargs)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._runner.close()


# --- shared memory ----------------------------------------------------------------------------
class _ArraySpec(NamedTuple):
    """How a worker finds a parent's shared array."""

    shm_name: str
    shape: tuple[int, ...]
    dtype: str


def _shared_view(shm: SharedMemory, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """An array on the shared block. Never hand it (or a view of it) to users: numpy does not
    pin the mapping, so once `shm.close()` runs the array dangles and reading it segfaults.
    That is why results are copies and every public method checks `closed` first."""
    return np.ndarray(shape, dtype=dtype, buffer=shm.buf)


class _Worker:
    """Command handlers of one worker process; each returns the (small, picklable) reply."""

    def __init__(self, envs: list[gym.Env], start: int):
        self.envs, self.start = envs, start
        self.shms: list[SharedMemory] = []
        self.runner: _EnvRunner | None = None

    def attach(self, specs: dict[ArrayKey, _ArraySpec]) -> None:
        """Map the parent's arrays and keep this worker's rows of them."""
        rows = slice(self.start, self.start + len(self.envs))
        views: dict[ArrayKey, np.ndarray] = {}
        for key, spec in specs.items():
            shm = SharedMemory(name=spec.shm_name)
            self.shms.append(shm)
            views[key] = _shared_view(shm, spec.shape, spec.dtype)[rows]
        history = {k: v for (group, k), v in views.items() if group == "history"}
        final = {k: v for (group, k), v in views.items() if group == "final"}
        self.runner = _EnvRunner(self.envs, self.start, history, final, self.envs[0].action_space.shape)

    def reset(self, payload: tuple[list[int | None], dict | None]) -> dict[str, np.ndarray]:
        return self.runner.reset(*payload)

    def step(self, payload: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple:
        return self.runner.step_chunk(*payload).pack()

    def call(self, payload: tuple[str, tuple, dict]) -> list[Any]:
        return self.runner.call(*payload)

    def close(self) -> None:
        _close_envs(self.envs)
        self.envs = []
        self.runner = None  # drop the views before unmapping
        for shm in self.shms:
            shm.close()  # the parent unlinks
        self.shms = []


def _send_error(conn: Connection, exc: BaseException) -> None:
    if isinstance(exc, VectorEnvError):  # already says which env and what it raised
        index, message = exc.env_index, str(exc)
    else:
        index, message = None, f"{type(exc).__name__}: {exc}"
    conn.send(("error", (index, message, traceback.format_exc())))


def _worker_main(conn: Connection, env_fns_blob: bytes, start: int) -> None:
    """Worker process: build the envs, report their spaces, then serve commands until 'close'."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent, which closes us
    worker = None
    try:
        try:
            envs = _build_envs(cloudpickle.loads(env_fns_blob), start)
            worker = _Worker(envs, start)
            conn.send(("ok", _common_spaces(envs, start)))
        except Exception as exc:
            _send_error(conn, exc)
            return
        while True:
            cmd, payload = conn.recv()
            if cmd == "close":
                return
            try:
                conn.send(("ok", getattr(worker, cmd)(payload)))
            except Exception as exc:
                _send_error(conn, exc)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        log.debug("worker for envs from %d: parent went away", start)
    finally:
        if worker is not None:
            worker.close()
        conn.close()


def _shutdown(procs: list[mp.process.BaseProcess], conns: list[Connection], shms: list[SharedMemory],
              timeout: float) -> None:
    """Stop workers (politely, then by force) and free the shared memory. Safe to call twice."""
    for proc, conn in zip(procs, conns):
        if proc.is_alive():
            try:
                conn.send(("close", None))
            except OSError:
                pass
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            log.warning("%s did not exit within %.0f s; terminating it", proc.name, timeout)
            proc.terminate()
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()
    for shm in shms:
        try:
            shm.close()
        except BufferError:  # not expected (numpy holds no buffer export); unlinking still frees the name
            pass
        try:
            shm.unlink()
        except FileNotFoundError:
            pass
    procs.clear()
    conns.clear()
    shms.clear()


class SharedMemoryVectorEnv(_VectorEnvBase):
    """N envs on W worker processes (contiguous slices), observations through shared memory.

    env_fns must be picklable by cloudpickle (lambdas and closures are fine); they are called in
    the workers, so nothing is built in this process. `context` is the multiprocessing start
    method: 'spawn' (default) or 'forkserver'; 'fork' is unsafe once MuJoCo/EGL are initialised.
    """

    def __init__(self, env_fns: Sequence[EnvFn], n_workers: int | None = None, context: str = "spawn",
                 close_timeout: float = 20.0, obs_history: int = 1):
        if not env_fns:
            raise ValueError("need at least one env factory")
        if n_workers is not None and n_workers < 1:
            raise ValueError(f"n_workers must be >= 1 (use SyncVectorEnv for 0), got {n_workers}")
        if context == "fork":
            log.warning("the 'fork' start method can deadlock or break GL contexts; prefer 'spawn'/'forkserver'")
        n_envs = len(env_fns)
        n_workers = min(n_envs, n_workers or os.cpu_count() or 1)
        self._slices = _split(n_envs, n_workers)
        self._procs: list[mp.process.BaseProcess] = []
        self._conns: list[Connection] = []
        self._shms: list[SharedMemory] = []
        self._specs: dict[ArrayKey, _ArraySpec] = {}
        self._broken: str | None = None
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns, self._shms, close_timeout)
        try:
            t0 = time.perf_counter()
            self._start_workers(mp.get_context(context), env_fns)
            obs_space, act_space, metadata = self._gather_spaces()
            super().__init__(n_envs, obs_space, act_space, metadata, obs_history=obs_history)
            self._broadcast("attach", self._specs)
            log.info("started %d envs on %d workers in %.1f s", n_envs, n_workers, time.perf_counter() - t0)
        except BaseException:
            self.close()
            raise

    @property
    def worker_pids(self) -> list[int | None]:
        return [p.pid for p in self._procs]

    # --- setup ---------------------------------------------------------------------------------
    def _start_workers(self, ctx: mp.context.BaseContext, env_fns: Sequence[EnvFn]) -> None:
        # One BLAS/OpenMP thread per worker: the workers already fill the cores, and OpenBLAS
        # threads spinning on tiny IK matrices made the arm controller ~4x slower (measured).
        with _single_threaded_children():
            self._spawn(ctx, env_fns)

    def _spawn(self, ctx: mp.context.BaseContext, env_fns: Sequence[EnvFn]) -> None:
        for w, (a, b) in enumerate(self._slices):
            parent_conn, child_conn = ctx.Pipe()
            blob = cloudpickle.dumps(list(env_fns[a:b]))
            proc = ctx.Process(target=_worker_main, args=(child_conn, blob, a), name=f"vector_env_worker_{w}",
                               daemon=True)
            proc.start()
            child_conn.close()  # so a dead worker shows up as EOF here
            self._procs.append(proc)
            self._conns.append(parent_conn)

    def _gather_spaces(self) -> tuple[gym.spaces.Dict, gym.spaces.Box, dict]:
        described = self._receive_all(range(len(self._conns)))
        obs_space, act_space, metadata = described[0]
        for w, (o, a, _) in enumerate(described[1:], start=1):
            if o != obs_space or a != act_space:
                raise VectorEnvError(f"envs of worker {w} (from env {self._slices[w][0]}) have different spaces "
                                     "than env 0", env_index=self._slices[w][0])
        return obs_space, act_space, metadata

    def _make_array(self, key: ArrayKey, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        shm = SharedMemory(create=True, size=max(1, int(np.prod(shape)) * dtype.itemsize))
        self._shms.append(shm)
        self._specs[key] = _ArraySpec(shm.name, shape, dtype.str)
        array = _shared_view(shm, shape, dtype)
        array.fill(0)
        return array

    # --- commands --------------------------------------------------------------------------------
    def _reset_envs(self, seeds: list[int | None], options: dict | None) -> dict[str, np.ndarray]:
        return _concat_infos(self._broadcast("reset", [(seeds[a:b], options) for a, b in self._slices]))

    def _step_envs(self, chunk: np.ndarray, active: np.ndarray, reset_seeds: np.ndarray) -> _StepReply:
        replies = [_StepReply.unpack(r) for r in
                   self._broadcast("step", [(chunk[a:b], active[a:b], reset_seeds[a:b]) for a, b in self._slices])]
        return _StepReply(np.concatenate([r.reward for r in replies]), np.concatenate([r.terminated for r in replies]),
                          np.concatenate([r.truncated for r in replies]), _concat_infos([r.infos for r in replies]))

    def _call_envs(self, name: str, args: tuple, kwargs: dict) -> list[Any]:
        return [item for reply in self._broadcast("call", (name, args, kwargs)) for item in reply]

    def _broadcast(self, cmd: str, payload: Any) -> list[Any]:
        """Send one command to every worker and wait for all replies (one per worker, in order).
        A list payload holds one payload per worker; anything else goes to every worker."""
        if self._broken:
            raise VectorEnvError(self._broken)
        sent, errors = [], []
        for w, conn in enumerate(self._conns):
            try:
                conn.send((cmd, payload[w] if isinstance(payload, list) else payload))
                sent.append(w)
            except OSError:
                errors.append(self._died(w))
        try:
            replies = self._receive_all(sent)
        except VectorEnvError as exc:
            errors.append(exc)
        except BaseException:  # e.g. Ctrl-C: replies left unread would be taken for the next command's
            self._broken = f"interrupted while waiting for '{cmd}' replies; call close()"
            raise
        if errors:
            raise errors[0]
        return replies

    def _receive_all(self, workers: Sequence[int]) -> list[Any]:
        """Replies of `workers`; reads every reply before raising the first failure (keeps pipes in sync)."""
        replies, errors = [], []
        for w in workers:
            try:
                status, payload = self._conns[w].recv()
            except (EOFError, OSError):
                errors.append(self._died(w))
                continue
            if status == "error":
                errors.append(self._worker_error(w, *payload))
            replies.append(payload)
        if errors:
            raise errors[0]
        return replies

    def _worker_error(self, w: int, env_index: int | None, message: str, tb: str) -> VectorEnvError:
        a, b = self._slices[w]
        return VectorEnvError(f"{message}\n(in worker {w}, envs {a}..{b - 1}); worker traceback:\n{tb}",
                              env_index=env_index)

    def _died(self, w: int) -> VectorEnvError:
        proc = self._procs[w]
        proc.join(1.0)
        a, b = self._slices[w]
        self._broken = (f"worker {w} (envs {a}..{b - 1}, pid {proc.pid}) died unexpectedly "
                        f"(exit code {proc.exitcode}); the vector env is unusable, call close()")
        return VectorEnvError(self._broken, env_index=a)

    @property
    def closed(self) -> bool:
        # also true after the finalizer ran at interpreter exit: the buffers are unmapped then
        return not self._finalizer.alive

    def close(self) -> None:
        """Stop the workers and unlink the shared memory (also runs on garbage collection/exit)."""
        if self.closed:
            return
        self._history = self._final_history = None  # views must go before unmapping
        self._finalizer()


def make_vector_env(env_fns: Sequence[EnvFn], n_workers: int | None = None, context: str = "spawn",
                    obs_history: int = 1) -> SyncVectorEnv | SharedMemoryVectorEnv:
    """SyncVectorEnv for n_workers == 0, else SharedMemoryVectorEnv (None: one worker per CPU)."""
    if n_workers == 0:
        return SyncVectorEnv(env_fns, obs_history=obs_history)
    return SharedMemoryVectorEnv(env_fns, n_workers, context=context, obs_history=obs_history)
