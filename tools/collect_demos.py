"""Collect one_leg demonstrations into an episodic zarr dataset.

    python tools/collect_demos.py task=one_leg n=100          # scripted expert, parallel envs
    python tools/collect_demos.py source=keyboard             # teleoperate one env in a window
    python tools/collect_demos.py n=20 resume=true            # append to an existing dataset

Scripted collection runs the expert in `env.n_envs` parallel envs through the shared rollout
loop (`sim.rollout.run_episodes`); episode seeds run `seed, seed + 1, ...` and each is recorded:
the expert's and the DART noise are seeded from it, so `env.reset(seed=...)` plus the seed
replays the episode. Nothing already written is lost
if the collector is interrupted: finished episodes are committed one by one.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data.episodes import EpisodeDataset, EpisodeWriter
from data.recorder import EpisodeRecorder, VectorRecorder
from data.schema import ActionSchema
from sim.experts.one_leg import ExpertConfig, ExpertPolicy
from sim.make import env_config_from_hydra, make_env, make_from_hydra
from sim.rollout import run_episodes

log = logging.getLogger("collect_demos")


def dataset_attrs(cfg: DictConfig, obs_schema, cameras: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": cfg.task.name,
        "randomness": cfg.task.randomness,
        "backend": cfg.sim.backend,
        "control_hz": float(cfg.sim.control_hz),
        "schema": {"obs": obs_schema.to_dict(), "action": ActionSchema(control_hz=cfg.sim.control_hz).to_dict()},
        "cameras": cameras,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def open_writer(cfg: DictConfig, attrs: dict[str, Any]) -> EpisodeWriter:
    out = Path(cfg.out)
    if out.exists() and not cfg.resume and not cfg.overwrite:
        raise SystemExit(f"{out} exists: pass resume=true to append to it or overwrite=true to replace it")
    if cfg.overwrite and not cfg.resume:
        return EpisodeWriter.create(out, attrs, overwrite=True)
    return EpisodeWriter.open_or_create(out, attrs, resume=bool(cfg.resume))


def perturb_actions(actions: np.ndarray, state: np.ndarray, rng: np.random.Generator, pos_std: float,
                    rot_std_deg: float, full_speed: float) -> np.ndarray:
    """Executed actions = expert actions + Gaussian pose noise (DART, Laskey et al. 2017).

    The dataset keeps the expert's clean action as the label, so demos contain the states a
    slightly-off learner drifts into *and* the expert's correction from them: a cloned
    policy learns to recover instead of compounding its errors. The noise scales with how far
    the expert moves this step (relative to `full_speed`), so the slow, sub-millimetre phases
    (alignment over the hole) stay feasible while fast transport moves get the full `pos_std`.
    """
    from data.rotation import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix

    out = np.array(actions, dtype=np.float64, copy=True)
    move = np.linalg.norm(out[:, :3] - state[:, :3], axis=-1)
    scale = np.clip(move / full_speed, 0.1, 1.0)[:, None]
    out[:, :3] += rng.normal(0.0, pos_std, (len(out), 3)) * scale
    if rot_std_deg > 0:
        for i in range(len(out)):
            axis = rng.normal(size=3)
            angle = np.radians(rng.normal(0.0, rot_std_deg)) * float(scale[i, 0])
            rot = axis_angle_to_matrix(axis, angle) @ rot6d_to_matrix(out[i, 3:9])
            out[i, 3:9] = matrix_to_rot6d(rot)
    return out.astype(np.asarray(actions).dtype)


class DARTExpert:
    """The scripted expert whose executed actions carry DART noise (`perturb_actions`), seeded
    per episode from the episode seed; `labels` keeps the clean actions of the last query."""

    def __init__(self, expert: ExpertPolicy, pos_std: float, rot_std_deg: float, full_speed: float):
        self.expert, self.pos_std, self.rot_std_deg, self.full_speed = expert, pos_std, rot_std_deg, full_speed
        self.obs_keys, self.obs_history, self.act_steps = expert.obs_keys, expert.obs_history, expert.act_steps
        self.rngs = [np.random.default_rng() for _ in range(len(expert.pool.experts))]
        self.labels: np.ndarray | None = None

    @property
    def enabled(self) -> bool:
        return self.pos_std > 0 or self.rot_std_deg > 0

    def begin_episodes(self, mask: np.ndarray, seeds: np.ndarray) -> None:
        self.expert.begin_episodes(mask, seeds)
        for i in np.flatnonzero(mask):
            self.rngs[i] = np.random.default_rng([int(seeds[i]), 7])

    def act(self, obs: dict[str, np.ndarray], generator=None) -> np.ndarray:
        self.labels = self.expert.act(obs, generator)
        if not self.enabled:
            return self.labels
        state = obs["state"][:, -1]
        return np.stack([perturb_actions(self.labels[i], state[i:i + 1], self.rngs[i], self.pos_std,
                                         self.rot_std_deg, self.full_speed) for i in range(len(state))])


def first_seed(writer: EpisodeWriter, base: int) -> int:
    """Episode seeds run base, base + 1, ...; a resumed dataset continues after its largest."""
    if not writer.n_episodes:
        return base
    return max(base, int(np.max(writer.group["meta"]["seed"][:])) + 1)


def collect_scripted(cfg: DictConfig) -> dict[str, Any]:
    n = int(cfg.n)
    with make_from_hydra(cfg, n_envs=min(int(cfg.env.n_envs), n)) as envs:
        n_envs = envs.num_envs
        schema = envs.call("obs_schema")[0]
        writer = open_writer(cfg, dataset_attrs(cfg, schema, envs.call("camera_info")[0]))
        pcfg = cfg.perturb
        expert = DARTExpert(ExpertPolicy(n_envs, ExpertConfig(**OmegaConf.to_container(cfg.expert))),
                            float(pcfg.pos_std), float(pcfg.rot_std_deg), float(cfg.expert.max_speed))
        recorder = VectorRecorder(writer, n_envs, obs_keys=list(schema.specs()))
        stats = {"episodes_written": 0, "successes": 0, "episodes_finished": 0}
        bar = tqdm(total=n, desc=f"{cfg.source} demos", unit="ep")

        def on_chunk(obs, chunk, step, active) -> bool:
            # one action per query: obs[:, -1] is what it was chosen from; the label is the clean action
            recorder.add({k: v[:, -1] for k, v in obs.items()}, expert.labels[:, 0], step.reward, rows=active)
            for i in np.flatnonzero(step.infos["done"] & active):
                ok = bool(step.infos["success"][i])
                open_quota = stats["episodes_written"] < n
                stats["episodes_finished"] += open_quota  # attempts while the quota was open
                if (ok or cfg.keep_failures) and open_quota:
                    recorder[i].finish(success=ok, source="scripted", seed=int(step.infos["episode_seed"][i]),
                                       operator="scripted_expert", env_index=int(i), notes=cfg.notes)
                    stats["episodes_written"] += 1
                    stats["successes"] += ok
                    bar.update(1)
                    bar.set_postfix(success=f"{stats['successes'] / stats['episodes_written']:.2f}")
                else:
                    recorder[i].discard()
            return stats["episodes_written"] >= n

        try:
            result = run_episodes(envs, expert, itertools.count(first_seed(writer, int(cfg.seed))),
                                  on_chunk=on_chunk, per_episode_noise=False)
        finally:
            bar.close()
    return {**stats, "env_steps": result.env_steps, "wall_s": result.wall_s}


def teleoperate(cfg: DictConfig) -> dict[str, Any]:
    from tools.teleop import KEY_HELP, Command, KeyboardTeleop, OpenCVViewer, SpaceMouseTeleop

    env_cfg = env_config_from_hydra(cfg)
    env = make_env(cfg.sim.backend, env_cfg)
    device_cls = SpaceMouseTeleop if cfg.source == "spacemouse" else KeyboardTeleop
    device = device_cls(pos_step=cfg.teleop.pos_step, rot_step_deg=cfg.teleop.rot_step_deg)
    viewer = OpenCVViewer(scale=int(cfg.teleop.window_scale))
    writer = open_writer(cfg, dataset_attrs(cfg, env.obs_schema, env.camera_info()))
    recorder = EpisodeRecorder(writer, obs_keys=list(env.obs_schema.specs()))
    print(KEY_HELP)
    written = 0
    obs, info = env.reset(seed=int(cfg.seed) + writer.n_episodes)
    device.sync(obs["state"])
    recording = False
    try:
        while written < cfg.n:
            images = [obs[k] for k in obs if k.startswith("rgb/")]
            status = f"{'REC' if recording else 'idle'} ep {written}/{cfg.n} steps {len(recorder)}"
            cmd = device.handle_key(viewer.show(images, status))
            if isinstance(device, SpaceMouseTeleop):
                device.poll()
            if cmd is Command.QUIT:
                break
            if cmd is Command.START and not recording:
                recording = True
            elif cmd is Command.DISCARD:
                recorder.discard()
                recording = False
            elif cmd is Command.STOP and recording:
                recorder.finish(success=bool(info.get("success", False)), source="teleop", seed=env.episode_seed,
                                operator=cfg.operator, notes=cfg.notes, device=cfg.source)
                written += 1
                recording = False
                obs, info = env.reset()
                device.sync(obs["state"])
                continue
            action = device.action()
            prev_obs = obs
            obs, reward, terminated, truncated, info = env.step(action)
            if recording:
                recorder.add(prev_obs, action, reward)
            if terminated or truncated:
                if recording:
                    recorder.finish(success=bool(info["success"]), source="teleop", seed=env.episode_seed,
                                    operator=cfg.operator, notes=cfg.notes, device=cfg.source)
                    written += 1
                    recording = False
                obs, info = env.reset()
                device.sync(obs["state"])
    finally:
        viewer.close()
        env.close()
    return {"episodes_written": written}


def summarize(path: Path) -> str:
    ds = EpisodeDataset(path)
    lengths = np.diff(np.concatenate([[0], ds.episode_ends]))
    return (f"dataset {path}: {len(ds)} episodes, success rate {ds.success.mean():.2f}, "
            f"{ds.n_frames} steps (mean {lengths.mean():.0f}/episode), "
            f"{ds.nbytes_on_disk() / 1e6:.1f} MB on disk")


@hydra.main(config_path="../configs", config_name="collect_demos", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.source == "scripted":
        stats = collect_scripted(cfg)
        log.info("%d episodes written, %d finished (expert success %.2f), in %.1f s (%.0f env-steps/s)",
                 stats["episodes_written"], stats["episodes_finished"],
                 stats["successes"] / max(1, stats["episodes_finished"]), stats["wall_s"],
                 stats["env_steps"] / stats["wall_s"])
    elif cfg.source in ("keyboard", "spacemouse"):
        teleoperate(cfg)
    else:
        raise SystemExit(f"unknown source '{cfg.source}': scripted | keyboard | spacemouse")
    print(summarize(Path(cfg.out)))


if __name__ == "__main__":
    main()
