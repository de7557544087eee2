"""Start-state distributions: simulator states recorded along scripted-expert or policy episodes.

DPPO fine-tuning can start episodes from a milestone of the task instead of the standard reset
(`task.start_states=PATH`, `task.start_state_prob`): e.g. `leg_upright`, the leg standing on
the table beside the hole, leaves only the insertion and the screwing - where cloned policies
fail - for cheap RL experiments, curricula and CI tests.

A set is one `.npz`: every key of `OneLegMujocoEnv.get_sim_state()` stacked over the states
(leading axis n) plus `__meta__`, a small JSON document: the milestone, randomness, the
episodes' seeds and steps at capture, the MuJoCo version and the model's sizes (nq, nv, nu, na,
neq, nbody, ...), so a set loaded into another model is a clear error, not a wrong simulation.

    python tools/record_start_states.py milestone=leg_upright n=64
    states = StartStates.load("start_states/one_leg_low_leg_upright.npz"); env.set_sim_state(states[3])
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "pixel_dppo.start_states"
VERSION = 1
META_KEY = "__meta__"
# model sizes a state's arrays are laid out by: any difference makes the set unusable
SIZE_FIELDS = ("nq", "nv", "nu", "na", "neq", "nbody", "nmocap", "nuserdata", "ngeom")


class IncompatibleStartStates(ValueError):
    """A start-state file that does not fit this model (other sizes, milestones or format)."""


def model_sizes(model) -> dict[str, int]:
    return {f: int(getattr(model, f)) for f in SIZE_FIELDS}


class StartStates:
    """n recorded sim states: `states[i]` is a dict for `env.set_sim_state`, `meta` the JSON meta."""

    def __init__(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], path: str | Path | None = None):
        lengths = {k: len(v) for k, v in arrays.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"start states need arrays with one common leading length, got {lengths}")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.meta = dict(meta)
        self.path = None if path is None else Path(path)

    @classmethod
    def from_states(cls, states: Sequence[Mapping[str, np.ndarray]], meta: Mapping[str, Any]) -> "StartStates":
        if not states:
            raise ValueError("no states to stack")
        keys = list(states[0])
        return cls({k: np.stack([np.asarray(s[k]) for s in states]) for k in keys}, meta)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"start state {i} out of range for {n} states")
        return {k: v[int(i)].copy() for k, v in self.arrays.items()}

    @property
    def milestone(self) -> str | None:
        return self.meta.get("milestone")

    def __repr__(self) -> str:
        return f"StartStates({len(self)} x {self.milestone!r}, {self.path or 'in memory'})"

    # --- files -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"start states are saved as .npz, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": VERSION, "n": len(self), **self.meta}
        np.savez_compressed(path, **self.arrays, **{META_KEY: np.array(json.dumps(meta))})
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "StartStates":
        """Read a set; a relative path resolves against the current directory."""
        path = Path(path).expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        if not path.is_file():
            raise FileNotFoundError(f"start states file {path} does not exist "
                                    "(record one with tools/record_start_states.py)")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as exc:  # noqa: BLE001 - a zip/npy error, name the file
            raise IncompatibleStartStates(f"{path} is not a readable start-states .npz: {exc}") from exc
        if META_KEY not in arrays:
            raise IncompatibleStartStates(f"{path} has no '{META_KEY}' entry: not a start-states file")
        meta = json.loads(str(arrays.pop(META_KEY)))
        if meta.get("format") != FORMAT or int(meta.get("version", -1)) > VERSION:
            raise IncompatibleStartStates(f"{path}: format {meta.get('format')!r} version {meta.get('version')} "
                                          f"is not {FORMAT!r} <= {VERSION}")
        return cls(arrays, meta, path)

    def check_compatible(self, model) -> None:
        """Raise IncompatibleStartStates (naming the file) unless the states fit `model`."""
        from sim.tasks.one_leg.task import MILESTONES

        where = self.path or "start states"
        want, have = model_sizes(model), dict(self.meta.get("model", {}))
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            detail = ", ".join(f"{k} {a} in the file vs {b} in the model" for k, (a, b) in diff.items())
            raise IncompatibleStartStates(f"{where} was recorded with another model ({detail}); "
                                          "re-record it with tools/record_start_states.py")
        if list(self.meta.get("milestones", [])) != list(MILESTONES):
            raise IncompatibleStartStates(f"{where} latches milestones {self.meta.get('milestones')}, "
                                          f"the task has {list(MILESTONES)}")
        import mujoco

        if self.meta.get("mujoco_version") != mujoco.__version__:
            log.warning("%s was recorded with MuJoCo %s, running %s: the states load, but episodes from them "
                        "need not replay the recording exactly", where, self.meta.get("mujoco_version"),
                        mujoco.__version__)


def record_start_states(cfg, milestone: str, n: int, path: str | Path | None, seed: int = 0, n_envs: int = 4,
                        n_workers: int = 0, offset_steps: int = 0, max_episodes: int | None = None,
                        expert_cfg=None, policy=None, policy_name: str | None = None,
                        act_kwargs: Mapping[str, Any] | None = None) -> StartStates:
    """Run the scripted expert, or `policy` (a `ChunkPolicy`, e.g. a pretrained checkpoint:
    its own states are where fine-tuning has to improve it, which the expert's are not),
    on episodes seeded seed, seed + 1, ... through
    `sim.rollout.run_episodes` and capture each episode's sim state at the first chunk boundary
    where `milestones/<milestone>` is true (`offset_steps` control steps later), one state per
    episode, until `n` states; saved to `path` (unless None) and returned. A policy runs with
    `act_kwargs` (e.g. `{"eta": 0.0}`) and noise seeded per episode, so a set is reproducible.

    Episodes that end before the capture (never reaching the milestone) are skipped and counted
    in the meta. At most `max_episodes` (default 4 n) episodes run; fewer than n states by then
    is an error. `cfg` is an `EnvConfig`; the states are independent of its observation mode.
    """
    import dataclasses

    import mujoco

    from sim.experts.one_leg import ExpertConfig, ExpertPolicy
    from sim.make import make
    from sim.rollout import MILESTONE_PREFIX, run_episodes
    from sim.tasks.one_leg.task import MILESTONES

    if milestone not in MILESTONES:
        raise ValueError(f"unknown milestone '{milestone}'; choose from {list(MILESTONES)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if offset_steps < 0:
        raise ValueError(f"offset_steps must be >= 0 (a capture after the milestone), got {offset_steps}")
    max_episodes = 4 * n if max_episodes is None else int(max_episodes)
    n_envs = max(1, min(int(n_envs), max_episodes))
    key = MILESTONE_PREFIX + milestone
    states: list[dict[str, np.ndarray]] = []
    seeds: list[int] = []
    capture_steps: list[int] = []
    first_seen: dict[int, int] = {}
    captured: set[int] = set()
    driver = ExpertPolicy(n_envs, expert_cfg or ExpertConfig()) if policy is None else policy
    history = int(getattr(driver, "obs_history", 1))

    with make(cfg, n_envs, n_workers=n_workers, obs_history=history) as envs:
        def on_chunk(obs, chunk, step, active) -> bool:
            inf = step.infos
            # an env whose episode ended in this chunk already holds its next episode's state
            hit = np.flatnonzero(inf[key] & active & ~inf["done"])
            want = []
            for i in hit:
                s, t = int(inf["episode_seed"][i]), int(inf["steps"][i])
                if s in captured:
                    continue
                if t - first_seen.setdefault(s, t) >= offset_steps:
                    want.append(i)
            if want:
                snapshot = envs.call("get_sim_state")
                for i in want[: n - len(states)]:
                    s = int(inf["episode_seed"][i])
                    states.append(snapshot[i])
                    seeds.append(s)
                    capture_steps.append(int(snapshot[i]["steps"]))
                    captured.add(s)
            return len(states) >= n

        who = "expert" if policy is None else "policy"
        result = run_episodes(envs, driver, range(int(seed), int(seed) + max_episodes), on_chunk=on_chunk,
                              act_kwargs=act_kwargs, per_episode_noise=policy is not None, progress=True,
                              desc=f"{who} to {milestone}")
        model = envs.call("model")[0] if n_workers == 0 else None
    finished = [e.seed for e in result.episodes]
    skipped = sum(s not in captured for s in finished)
    log.info("start states '%s': %d captured from %d episodes, %d finished episodes never reached it",
             milestone, len(states), len(set(finished) | captured), skipped)
    if len(states) < n:
        raise RuntimeError(f"only {len(states)} of {max_episodes} {who} episodes reached '{milestone}' "
                           f"({skipped} did not); asked for {n}")
    if model is None:  # the model lives in the workers: build one here for its sizes
        from sim.backends.mujoco_one_leg import OneLegMujocoEnv

        probe = OneLegMujocoEnv(dataclasses.replace(cfg, obs_mode="state"), render_mode=None)
        model = probe.model
        probe.close()
    meta = {
        "task": cfg.task, "milestone": milestone, "randomness": cfg.randomness, "offset_steps": int(offset_steps),
        "seeds": seeds, "capture_steps": capture_steps, "mean_capture_step": float(np.mean(capture_steps)),
        "episodes_finished": len(finished), "episodes_skipped": int(skipped),
        "mujoco_version": mujoco.__version__, "model": model_sizes(model), "milestones": list(MILESTONES),
        "source_start_states": cfg.start_states,
        "expert": dataclasses.asdict(expert_cfg or ExpertConfig()) if policy is None else None,
        "policy": None if policy is None else (policy_name or type(policy).__name__),
        "act_kwargs": dict(act_kwargs or {}),
    }
    out = StartStates.from_states(states, meta)
    if path is not None:
        out.save(path)
    return out
