"""Vector environments: N gymnasium envs stepped in lockstep, in-process or in worker processes.

Why not gymnasium.vector.AsyncVectorEnv: it runs one process per env, while a MuJoCo env here
steps in a few ms but takes ~1.5 s and an EGL context to build, so we pack a contiguous slice
of envs into each of W workers. Observations (images included) and the last observation of a
finished episode are written by the workers straight into `multiprocessing.shared_memory`
arrays of shape (N, ...); actions travel the other way through a shared (N, act_dim) float32
array. Pipes only carry commands and small per-env results (reward, flags, info dicts).

Semantics shared by `SyncVectorEnv` and `SharedMemoryVectorEnv` (one implementation,
`_EnvRunner`, runs in-process for the former and inside every worker for the latter):

* `reset(seed)` resets env i with `seed + i`; later auto-resets call `env.reset(seed=None)`,
  continuing each env's own RNG, so a run depends on the seed only, not on the worker count.
* Same-step auto-reset: when env i terminates or truncates, the returned obs[i] already is the
  first obs of its next episode; `infos["final_obs"]` holds the last obs of the finished
  episode (for bootstrapping truncated episodes) and `infos["final_info"][i]` its last info.
* Per-env info values that are numbers/bools are stacked into (N,) arrays under their key.
  For an env that was just auto-reset, that per-env info is the *reset* info of the new episode
  (so e.g. `infos["steps"][i] == 0`); read the finished episode's info from `final_info[i]`.
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

log = logging.getLogger(__name__)

EnvFn = Callable[[], gym.Env]
ObsDict = dict[str, np.ndarray]
ArrayKey = tuple[str, str]  # ("obs" | "final_obs" | "actions", observation key or "")

_MISSING = object()


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


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


class _StepResult(NamedTuple):
    """What one env's step sends back to the parent (small: no observations)."""

    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]  # the reset info of the new episode when the env was auto-reset
    final_info: dict[str, Any] | None  # the finished episode's last step info, else None
    episode_return: float  # valid when terminated or truncated
    episode_length: int


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


def _write_obs(buffers: ObsDict, row: int, obs: Mapping[str, np.ndarray]) -> None:
    if obs.keys() != buffers.keys():
        raise KeyError(f"observation keys {sorted(obs)} do not match the observation space {sorted(buffers)}")
    for key, buf in buffers.items():
        buf[row] = obs[key]


def _split(n_envs: int, n_workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) env slices, sizes differing by at most one."""
    sizes = [n_envs // n_workers + (w < n_envs % n_workers) for w in range(n_workers)]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _concat(per_worker: list[list[Any]]) -> list[Any]:
    """Per-worker reply lists -> one list in env order (workers own contiguous slices)."""
    return [item for reply in per_worker for item in reply]


def _stack_values(values: list[Any]) -> np.ndarray | list[Any]:
    """(N,) array for bool/int/float values (missing: False/0/NaN); a plain list for anything else."""
    present = [v for v in values if v is not _MISSING]
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        dtype, fill = np.bool_, False
    elif all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in present):
        dtype, fill = np.int64, 0
    elif all(isinstance(v, numbers.Real) for v in present):
        dtype, fill = np.float64, np.nan
    else:
        return [None if v is _MISSING else v for v in values]
    return np.array([fill if v is _MISSING else v for v in values], dtype=dtype)


def _stack_infos(infos: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-env info dicts -> one dict of (N,) arrays (keys in first-seen order)."""
    keys = list(dict.fromkeys(k for info in infos for k in info))
    return {k: _stack_values([info.get(k, _MISSING) for info in infos]) for k in keys}


# --- the episode logic: runs in-process (SyncVectorEnv) or in each worker --------------------
class _EnvRunner:
    """Steps a contiguous slice of envs with same-step auto-reset, writing obs into given arrays.

    `obs_buf` / `final_obs_buf` map observation keys to (n_local, ...) arrays: plain numpy
    arrays for SyncVectorEnv, row slices of shared memory inside a worker.
    """

    def __init__(self, envs: list[gym.Env], start: int, obs_buf: ObsDict, final_obs_buf: ObsDict,
                 action_shape: tuple[int, ...]):
        self.envs, self.start = envs, start
        self.obs_buf, self.final_obs_buf = obs_buf, final_obs_buf
        self.action_shape = action_shape
        self.returns = np.zeros(len(envs), dtype=np.float64)
        self.lengths = np.zeros(len(envs), dtype=np.int64)

    def reset(self, seed: int | None, options: dict | None) -> list[dict[str, Any]]:
        infos = []
        for j, env in enumerate(self.envs):
            with _blame(self.start + j):
                obs, info = env.reset(seed=None if seed is None else seed + self.start + j, options=options)
                _write_obs(self.obs_buf, j, obs)
            infos.append(info)
        self.returns[:] = 0.0
        self.lengths[:] = 0
        return infos

    def step(self, actions: np.ndarray) -> list[_StepResult]:
        """`actions`: (n_local, act_dim) float32 rows for this slice."""
        return [self._step_one(j, actions[j]) for j in range(len(self.envs))]

    def _step_one(self, j: int, action: np.ndarray) -> _StepResult:
        env = self.envs[j]
        with _blame(self.start + j):
            # a copy: the env may keep the action, and the row is overwritten next step
            obs, reward, terminated, truncated, info = env.step(action.reshape(self.action_shape).copy())
            self.returns[j] += reward
            self.lengths[j] += 1
            final_info, ep_return, ep_length = None, float(self.returns[j]), int(self.lengths[j])
            if terminated or truncated:
                _write_obs(self.final_obs_buf, j, obs)
                final_info = info
                self.returns[j], self.lengths[j] = 0.0, 0
                obs, info = env.reset(seed=None)  # continue this env's own RNG
            _write_obs(self.obs_buf, j, obs)
        return _StepResult(float(reward), bool(terminated), bool(truncated), info, final_info, ep_return, ep_length)

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
    """Action checking, result assembly and the public API; subclasses move the data around."""

    def __init__(self, num_envs: int, obs_space: gym.spaces.Dict, act_space: gym.spaces.Box, metadata: dict):
        self.num_envs = num_envs
        self.single_observation_space = obs_space
        self.single_action_space = act_space
        self.observation_space = gym.vector.utils.batch_space(obs_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(act_space, num_envs)
        self.metadata = {**metadata, "autoreset_mode": "same_step"}
        self._act_dim = int(np.prod(act_space.shape))
        self._obs_buf = self._allocate("obs")
        self._final_obs_buf = self._allocate("final_obs")
        self._act_buf = self._make_array(("actions", ""), (num_envs, self._act_dim), np.dtype(np.float32))
        self._needs_reset = True

    def _allocate(self, group: str) -> ObsDict:
        return {k: self._make_array((group, k), (self.num_envs, *s.shape), np.dtype(s.dtype))
                for k, s in self.single_observation_space.spaces.items()}

    # subclass hooks
    def _make_array(self, key: ArrayKey, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        raise NotImplementedError

    def _reset_envs(self, seed: int | None, options: dict | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _step_envs(self) -> list[_StepResult]:
        raise NotImplementedError

    def _call_envs(self, name: str, args: tuple, kwargs: dict) -> list[Any]:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # public API
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[ObsDict, dict[str, Any]]:
        """Reset every env (env i with `seed + i`); returns copies of the obs and stacked infos."""
        self._check_open()
        self._needs_reset = True
        infos = self._reset_envs(seed, options)
        self._needs_reset = False
        return self._copy(self._obs_buf), _stack_infos(infos)

    def step(self, actions: np.ndarray) -> tuple[ObsDict, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env with actions[i]; done envs are reset in the same call (see module doc)."""
        self._check_open()
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (after an env error the envs are out of sync)")
        self._act_buf[:] = self._check_actions(actions)
        try:
            results = self._step_envs()
        except VectorEnvError:
            self._needs_reset = True
            raise
        return self._assemble(results)

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
        expected = (self.num_envs, *self.single_action_space.shape)
        if actions.shape not in (expected, (self.num_envs, self._act_dim)):
            raise ValueError(f"actions must have shape {expected}, got {actions.shape}")
        return actions.reshape(self.num_envs, self._act_dim)

    @staticmethod
    def _copy(buffers: ObsDict) -> ObsDict:
        return {k: v.copy() for k, v in buffers.items()}

    def _assemble(self, results: list[_StepResult]) -> tuple[ObsDict, np.ndarray, np.ndarray, np.ndarray,
                                                             dict[str, Any]]:
        rewards = np.array([r.reward for r in results], dtype=np.float32)
        terminated = np.array([r.terminated for r in results], dtype=bool)
        truncated = np.array([r.truncated for r in results], dtype=bool)
        done = terminated | truncated
        final_obs = {}
        for key, buf in self._final_obs_buf.items():
            final_obs[key] = np.zeros_like(buf)  # rows of envs that did not finish stay zero
            final_obs[key][done] = buf[done]
        infos = _stack_infos([r.info for r in results])
        infos.update(
            done=done,
            final_obs=final_obs,
            final_info=[r.final_info for r in results],
            episode_return=np.where(done, [r.episode_return for r in results], 0.0).astype(np.float32),
            episode_length=np.where(done, [r.episode_length for r in results], 0).astype(np.int64),
        )
        return self._copy(self._obs_buf), rewards, terminated, truncated, infos

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_envs={self.num_envs})"


class SyncVectorEnv(_VectorEnvBase):
    """All envs in this process, one after another: for debugging (pdb works) and n_workers=0."""

    def __init__(self, env_fns: Sequence[EnvFn]):
        if not env_fns:
            raise ValueError("need at least one env factory")
        envs = _build_envs(env_fns, 0)
        try:
            super().__init__(len(envs), *_common_spaces(envs, 0))
        except BaseException:
            _close_envs(envs)
            raise
        self._runner = _EnvRunner(envs, 0, self._obs_buf, self._final_obs_buf, self.single_action_space.shape)
        self._closed = False

    def _make_array(self, key: ArrayKey, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def _reset_envs(self, seed: int | None, options: dict | None) -> list[dict[str, Any]]:
        return self._runner.reset(seed, options)

    def _step_envs(self) -> list[_StepResult]:
        return self._runner.step(self._act_buf)

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
        self.actions: np.ndarray | None = None

    def attach(self, specs: dict[ArrayKey, _ArraySpec]) -> None:
        """Map the parent's arrays and keep this worker's rows of them."""
        rows = slice(self.start, self.start + len(self.envs))
        views: dict[ArrayKey, np.ndarray] = {}
        for key, spec in specs.items():
            shm = SharedMemory(name=spec.shm_name)
            self.shms.append(shm)
            views[key] = _shared_view(shm, spec.shape, spec.dtype)[rows]
        obs = {k: v for (group, k), v in views.items() if group == "obs"}
        final = {k: v for (group, k), v in views.items() if group == "final_obs"}
        self.actions = views[("actions", "")]
        self.runner = _EnvRunner(self.envs, self.start, obs, final, self.envs[0].action_space.shape)

    def reset(self, payload: tuple[int | None, dict | None]) -> list[dict[str, Any]]:
        return self.runner.reset(*payload)

    def step(self, _payload: None) -> list[_StepResult]:
        return self.runner.step(self.actions)

    def call(self, payload: tuple[str, tuple, dict]) -> list[Any]:
        return self.runner.call(*payload)

    def close(self) -> None:
        _close_envs(self.envs)
        self.envs = []
        self.runner = self.actions = None  # drop the views before unmapping
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
                 close_timeout: float = 20.0):
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
            super().__init__(n_envs, obs_space, act_space, metadata)
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
    def _reset_envs(self, seed: int | None, options: dict | None) -> list[dict[str, Any]]:
        return _concat(self._broadcast("reset", (seed, options)))

    def _step_envs(self) -> list[_StepResult]:
        return _concat(self._broadcast("step", None))

    def _call_envs(self, name: str, args: tuple, kwargs: dict) -> list[Any]:
        return _concat(self._broadcast("call", (name, args, kwargs)))

    def _broadcast(self, cmd: str, payload: Any) -> list[Any]:
        """Send one command to every worker and wait for all replies (one per worker, in order)."""
        if self._broken:
            raise VectorEnvError(self._broken)
        sent, errors = [], []
        for w, conn in enumerate(self._conns):
            try:
                conn.send((cmd, payload))
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
        self._obs_buf = self._final_obs_buf = self._act_buf = None  # views must go before unmapping
        self._finalizer()


def make_vector_env(env_fns: Sequence[EnvFn], n_workers: int | None = None,
                    context: str = "spawn") -> SyncVectorEnv | SharedMemoryVectorEnv:
    """SyncVectorEnv for n_workers == 0, else SharedMemoryVectorEnv (None: one worker per CPU)."""
    if n_workers == 0:
        return SyncVectorEnv(env_fns)
    return SharedMemoryVectorEnv(env_fns, n_workers, context=context)
