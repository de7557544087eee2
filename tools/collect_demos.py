"""Collect one_leg demonstrations into an episodic zarr dataset.

    python tools/collect_demos.py task=one_leg n=100          # scripted expert, parallel envs
    python tools/collect_demos.py source=keyboard             # teleoperate one env in a window
    python tools/collect_demos.py n=20 resume=true            # append to an existing dataset

Scripted collection runs the expert in `env.n_envs` parallel envs; each episode's seed is
recorded, so `env.reset(seed=...)` replays its initial state. Nothing already written is lost
if the collector is interrupted: finished episodes are committed one by one.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data.episodes import EpisodeDataset, EpisodeWriter
from data.recorder import EpisodeRecorder, VectorRecorder
from data.schema import ActionSchema
from sim.experts.one_leg import ExpertConfig, ExpertPool
from sim.make import env_config_from_hydra, make_env, make_vector_env_from_hydra

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


def collect_scripted(cfg: DictConfig) -> dict[str, Any]:
    envs = make_vector_env_from_hydra(cfg, n_envs=min(int(cfg.env.n_envs), int(cfg.n)))
    n_envs = envs.num_envs
    try:
        schema = envs.call("obs_schema")[0]
        writer = open_writer(cfg, dataset_attrs(cfg, schema, envs.call("camera_info")[0]))
        start_count = writer.n_episodes
        # continue the seed stream after what a resumed dataset already holds
        seed = int(cfg.seed) + 1_000_003 * start_count
        experts = ExpertPool(n_envs, ExpertConfig(**OmegaConf.to_container(cfg.expert)), seed=seed)
        recorder = VectorRecorder(writer, n_envs, obs_keys=list(schema.specs()))
        obs, infos = envs.reset(seed=seed)
        episode_seeds = np.asarray(infos["episode_seed"]).copy()
        for i in range(n_envs):
            experts.reset(i, seed=int(episode_seeds[i]))
        noise_rng = np.random.default_rng([int(cfg.seed), start_count, 7])
        pcfg = cfg.perturb
        written, successes, finished, steps, t0 = 0, 0, 0, 0, time.perf_counter()
        with tqdm(total=int(cfg.n), desc=f"{cfg.source} demos", unit="ep") as bar:
            while written < cfg.n:
                actions = experts.act(obs)
                executed = actions
                if pcfg.pos_std > 0 or pcfg.rot_std_deg > 0:
                    executed = perturb_actions(actions, obs["state"], noise_rng, float(pcfg.pos_std),
                                               float(pcfg.rot_std_deg), float(cfg.expert.max_speed))
                prev_obs = obs  # the vector env returns fresh arrays every step
                obs, rewards, terminated, truncated, infos = envs.step(executed)
                recorder.add(prev_obs, actions, rewards)  # the label is the expert's clean action
                steps += n_envs
                for i in np.flatnonzero(terminated | truncated):
                    final = infos["final_info"][i]
                    ok = bool(final["success"])
                    finished += written < cfg.n  # attempts while the quota was open
                    if (ok or cfg.keep_failures) and written < cfg.n:
                        recorder[i].finish(success=ok, source="scripted", seed=int(episode_seeds[i]),
                                           operator="scripted_expert", env_index=int(i), notes=cfg.notes)
                        written += 1
                        successes += ok
                        bar.update(1)
                        bar.set_postfix(success=f"{successes / written:.2f}")
                    else:
                        recorder[i].discard()
                    episode_seeds[i] = int(infos["episode_seed"][i])
                    experts.reset(int(i), seed=int(episode_seeds[i]))
    finally:
        envs.close()
    return {"episodes_written": written, "successes": successes, "episodes_finished": finished, "env_steps": steps,
            "wall_s": time.perf_counter() - t0}


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
