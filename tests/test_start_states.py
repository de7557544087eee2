"""Start-state distributions: exact sim-state snapshots, the .npz set, resets from it, recording."""
import copy
import dataclasses
import json
from pathlib import Path

import mujoco
import numpy as np
import pytest

from sim.backends.mujoco_one_leg import PHYSICS_FIELDS, OneLegMujocoEnv
from sim.config import EnvConfig
from sim.experts.one_leg import ExpertPolicy, OneLegExpert
from sim.make import make
from sim.rollout import run_episodes
from sim.start_states import IncompatibleStartStates, StartStates, record_start_states
from sim.tasks.one_leg.task import MILESTONES
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
LEG_UPRIGHT = ROOT / "start_states" / "one_leg_low_leg_upright.npz"
THREAD_ENGAGED = ROOT / "start_states" / "one_leg_low_thread_engaged.npz"
SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


def _env(**kw) -> OneLegMujocoEnv:
    return OneLegMujocoEnv(EnvConfig(randomness="low", **kw), render_mode=None)


def _integration_state(env) -> np.ndarray:
    out = np.empty(mujoco.mj_stateSize(env.model, SPEC))
    mujoco.mj_getState(env.model, env.data, out, SPEC)
    return out


def _same_info(a, b) -> bool:
    """Equal info dicts, NaN thread depths included (floats compared by their exact repr)."""
    def dump(info):
        return json.dumps(info, sort_keys=True, default=np.generic.item)

    return dump(a) == dump(b)


def _same_obs(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def expert_run():
    """Snapshots of one expert episode (seed 50000) before and after the thread engaged, each with
    the next 40 actions and what they observed: the recording env stepped on past the snapshot."""
    env, expert = _env(), OneLegExpert()
    obs, _ = env.reset(seed=50000)
    expert.reset(50000)
    snaps = {}
    while len(snaps) < 2:
        obs, *_ = env.step(expert.act(obs))
        engaged = env.thread.engaged_hole >= 0
        if ("before" not in snaps and env.steps == 150) or ("after" not in snaps and engaged and env.steps >= 275):
            snap, follower, o = env.get_sim_state(), copy.deepcopy(expert), obs
            actions, observed = [], []
            for _ in range(40):
                actions.append(follower.act(o))
                o, r, _, _, info = env.step(actions[-1])
                observed.append((o, r, info))
            snaps["after" if engaged else "before"] = (snap, actions, observed)
            env.set_sim_state(snap)  # and on with the episode from the snapshot
    env.close()
    return snaps


def test_sim_state_covers_mujocos_integration_state():
    env = _env()
    env.reset(seed=1)
    state = env.get_sim_state()
    assert sum(state[f].size for f in PHYSICS_FIELDS) == mujoco.mj_stateSize(env.model, SPEC)


@pytest.mark.parametrize("when", ["before", "after"])
def test_restored_state_replays_bit_for_bit(expert_run, when, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    snap, actions, observed = expert_run[when]
    assert (snap["thread_engaged_hole"] >= 0) == (when == "after")
    fresh = _env()
    fresh.reset(seed=777)  # another episode first: its own parts, thread, milestones, step count
    fresh.set_sim_state(snap)
    assert fresh.steps == snap["steps"] and fresh.thread.engaged_hole == snap["thread_engaged_hole"]
    again = _env()
    again.reset(seed=50000)
    again.set_sim_state(snap)
    assert np.array_equal(_integration_state(fresh), _integration_state(again))
    for k, (action, (obs, reward, info)) in enumerate(zip(actions, observed)):
        obs2, reward2, _, _, info2 = fresh.step(action)
        assert _same_obs(obs, obs2), f"observation {k} after the restore differs"
        assert info2["episode_seed"] == 777 and info["episode_seed"] == 50000  # the env's own
        assert reward == reward2 and _same_info({**info, "episode_seed": 0}, {**info2, "episode_seed": 0})
    if when == "after":
        assert info2["engaged"] and info2["milestones"]["thread_engaged"]


def test_save_load_round_trip(expert_run, tmp_path):
    snaps = [expert_run[w][0] for w in ("before", "after")]
    meta = {"milestone": "leg_upright", "seeds": [1, 2], "model": {"nq": 31}}
    path = StartStates.from_states(snaps, meta).save(tmp_path / "s.npz")
    loaded = StartStates.load(path)
    assert len(loaded) == 2 and loaded.milestone == "leg_upright" and loaded.path == path
    assert loaded.meta["seeds"] == [1, 2] and loaded.meta["n"] == 2 and loaded.meta["format"]
    for i in range(2):
        got = loaded[i]
        assert got.keys() == snaps[i].keys()
        for k in got:
            assert got[k].dtype == snaps[i][k].dtype and np.array_equal(got[k], snaps[i][k]), k
    with pytest.raises(IndexError):
        loaded[2]


def test_incompatible_or_missing_files_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    states = StartStates.load(LEG_UPRIGHT)
    env = _env()
    states.check_compatible(env.model)  # the committed set fits the current model
    bad = StartStates(states.arrays, {**states.meta, "model": {**states.meta["model"], "nq": 30}})
    path = bad.save(tmp_path / "other_model.npz")
    with pytest.raises(IncompatibleStartStates, match=r"other_model\.npz.*nq 30 in the file vs 31"):
        StartStates.load(path).check_compatible(env.model)
    with pytest.raises(IncompatibleStartStates, match="other_model.npz"):
        _env(start_states=str(path)).reset(seed=0)
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        _env(start_states="nowhere.npz").reset(seed=0)
    np.savez(tmp_path / "plain.npz", qpos=np.zeros((2, 31)))
    with pytest.raises(IncompatibleStartStates, match="plain.npz.*not a start-states file"):
        StartStates.load("plain.npz")  # relative: against the current directory


def test_reset_from_leg_upright_is_a_function_of_the_seed(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    states = StartStates.load(LEG_UPRIGHT)
    a, b = _env(start_states=str(LEG_UPRIGHT)), _env(start_states=str(LEG_UPRIGHT))
    indices = []
    for seed in range(5):
        obs, info = a.reset(seed=seed)
        i = info["start_state"]
        indices.append(i)
        assert 0 <= i < len(states) and info["steps"] == 0 and a.steps == 0
        assert info["milestones"]["leg_upright"] and not info["milestones"]["thread_engaged"]
        assert np.array_equal(a.data.qpos, states[i]["qpos"])  # the leg (and everything) as recorded
        leg = a.data.qpos[a.leg_qadr:a.leg_qadr + 7]
        assert np.array_equal(leg, states.arrays["qpos"][i, a.leg_qadr:a.leg_qadr + 7])
        obs_b, info_b = b.reset(seed=seed)
        assert info_b["start_state"] == i and _same_obs(obs, obs_b)
    assert len(set(indices)) > 1, indices
    # steps count from 0: the episode gets the full time limit
    _, _, _, _, info = a.step(obs["state"][:10].copy())
    assert info["steps"] == 1 and info["start_state"] == indices[-1]


def test_start_state_prob(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    plain, never = _env(), _env(start_states=str(LEG_UPRIGHT), start_state_prob=0.0)
    for seed in (3, 4):
        obs, info = plain.reset(seed=seed)
        obs0, info0 = never.reset(seed=seed)
        assert _same_obs(obs, obs0) and info0["start_state"] == -1 and _same_info(info, info0)
        assert np.array_equal(plain.data.qpos, never.data.qpos)
    half = _env(start_states=str(LEG_UPRIGHT), start_state_prob=0.5)
    picked = [half.reset(seed=s)[1]["start_state"] for s in range(12)]
    assert -1 in picked and any(i >= 0 for i in picked), picked
    with pytest.raises(ValueError, match="start_state_prob"):
        _env(start_states=str(LEG_UPRIGHT), start_state_prob=1.5)


def test_expert_from_start_states_finishes_in_far_fewer_steps(monkeypatch, tmp_path):
    """The vector env carries `start_state` as an (N,) info; the expert picks a leg_upright state
    up where it was recorded and succeeds in ~250 steps instead of ~420 from the standard reset."""
    monkeypatch.chdir(tmp_path)
    cfg = EnvConfig(randomness="low", start_states=str(LEG_UPRIGHT))
    seeds = list(range(70000, 70004))
    with make(cfg, 2, n_workers=0) as envs:
        _, infos = envs.reset(seeds=seeds[:2])
        assert infos["start_state"].shape == (2,) and (infos["start_state"] >= 0).all()
        assert infos["milestones/leg_upright"].all()
        starts = []
        result = run_episodes(envs, ExpertPolicy(2), seeds, per_episode_noise=False,
                              on_chunk=lambda o, c, step, a: starts.append(step.infos["start_state"].copy()))
    assert all((s >= 0).all() for s in starts)
    lengths = [e.length for e in result.episodes if e.success]
    assert len(lengths) >= 3, [(e.success, e.length) for e in result.episodes]
    with make(EnvConfig(randomness="low"), 2, n_workers=0) as envs:
        standard = run_episodes(envs, ExpertPolicy(2), seeds[:2], per_episode_noise=False)
    assert standard.success_rate == 1.0
    assert np.mean(lengths) < 300 and np.mean(lengths) < 0.7 * standard.mean_length, (lengths, standard.mean_length)


def test_expert_from_thread_engaged(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = EnvConfig(randomness="low", start_states=str(THREAD_ENGAGED))
    with make(cfg, 2, n_workers=0) as envs:
        result = run_episodes(envs, ExpertPolicy(2), [71000, 71001], per_episode_noise=False)
    assert result.success_rate == 1.0 and result.mean_length < 200, result.summary()


def test_record_start_states(monkeypatch, tmp_path):
    """Recording from the leg_upright set (cheap: the thread engages ~80 steps in)."""
    monkeypatch.chdir(tmp_path)
    cfg = EnvConfig(randomness="low", start_states=str(LEG_UPRIGHT))
    states = record_start_states(cfg, "thread_engaged", 2, "out/te.npz", seed=80000, n_envs=2)
    loaded = StartStates.load("out/te.npz")
    assert len(loaded) == 2 and loaded.milestone == "thread_engaged"
    meta = loaded.meta
    assert sorted(meta["seeds"]) == [80000, 80001] and meta["episodes_skipped"] == 0
    assert meta["model"]["nq"] == 31 and meta["milestones"] == list(MILESTONES)
    assert meta["mujoco_version"] == mujoco.__version__ and meta["source_start_states"] == str(LEG_UPRIGHT)
    k = MILESTONES.index("thread_engaged")
    for i in range(2):
        assert loaded[i]["reached"][k] and loaded[i]["thread_engaged_hole"] >= 0
        assert loaded[i]["steps"] == meta["capture_steps"][i]
    assert np.array_equal(states.arrays["qpos"], loaded.arrays["qpos"])
    with pytest.raises(ValueError, match="unknown milestone"):
        record_start_states(cfg, "leg_flying", 1, None)


def test_cli_and_hydra_keys(monkeypatch, tmp_path):
    """tools/record_start_states.py end to end (top_in_corner: ~85 steps), and task.start_states
    from Hydra, a relative path resolved against the current directory."""
    from sim.make import env_config_from_hydra
    from tools.record_start_states import run

    monkeypatch.chdir(tmp_path)
    cfg = compose_config("record_start_states", ["milestone=top_in_corner", "n=2", "env.n_envs=2",
                                                 "env.n_workers=0", "out=corner.npz"])
    summary = run(cfg, tmp_path)
    assert summary["n"] == 2 and summary["bytes"] < 20_000
    assert json.loads((tmp_path / "summary.json").read_text())["meta"]["milestone"] == "top_in_corner"
    assert env_config_from_hydra(cfg).start_states is None
    env_cfg = env_config_from_hydra(compose_config(
        "rollout_expert", ["task.start_states=corner.npz", "task.start_state_prob=0.25"]))
    assert env_cfg.start_states == str(tmp_path / "corner.npz") and env_cfg.start_state_prob == 0.25
    env = OneLegMujocoEnv(dataclasses.replace(env_cfg, start_state_prob=1.0), render_mode=None)
    _, info = env.reset(seed=0)
    assert info["start_state"] in (0, 1) and info["milestones"]["top_in_corner"]


def test_policy_records_its_own_states(monkeypatch, tmp_path):
    """checkpoint=... : the pretrained policy drives (eta 0, noise seeded per episode), so its
    own states are recorded, reproducibly, and the meta says who drove."""
    from tools.record_start_states import run

    monkeypatch.chdir(tmp_path)
    ckpt = str(ROOT / "checkpoints" / "one_leg_state_bc.pt")
    overrides = ["milestone=top_in_corner", "n=2", "env.n_envs=2", "env.n_workers=0", "seed=70000",
                 f"checkpoint={ckpt}"]
    run(compose_config("record_start_states", overrides + ["out=a.npz"]), tmp_path)
    run(compose_config("record_start_states", overrides + ["out=b.npz"]), tmp_path)
    a, b = StartStates.load("a.npz"), StartStates.load("b.npz")
    assert a.meta["policy"] == ckpt and a.meta["expert"] is None and a.meta["act_kwargs"] == {"eta": 0.0}
    assert sorted(a.meta["seeds"]) == [70000, 70001]
    k = MILESTONES.index("top_in_corner")
    assert all(a[i]["reached"][k] for i in range(2))
    assert np.array_equal(a.arrays["qpos"], b.arrays["qpos"]) and a.meta["capture_steps"] == b.meta["capture_steps"]
    expert = record_start_states(EnvConfig(randomness="low"), "top_in_corner", 2, None, seed=70000, n_envs=2)
    assert not np.array_equal(expert.arrays["qpos"], a.arrays["qpos"])  # the policy's states, not the expert's
