"""The one rollout loop: episodes named by seeds, idle envs, chunk sizes, callbacks, and an
Evaluator whose envs live across evaluations."""
import functools

import numpy as np
import pytest

from sim.config import EnvConfig
from sim.experts.one_leg import ExpertPolicy
from sim.make import make
from sim.rollout import Evaluator, run_episodes
from sim.vector_env import make_vector_env
from tests.test_vector_env import CountdownEnv


class RecordingPolicy:
    """A chunk policy that records what it was shown; its chunks are 5 long, 3 get executed."""

    obs_keys = ("state",)
    obs_history = 2
    act_steps = 3

    def __init__(self):
        self.shapes, self.begun = [], []

    def begin_episodes(self, mask, seeds):
        self.begun += [int(s) for s in seeds[mask]]

    def act(self, obs, generator=None):
        self.shapes.append(obs["state"].shape)
        assert generator is None or len(generator) == len(obs["state"])
        return np.zeros((len(obs["state"]), 5, 1), np.float32)


def test_every_seed_runs_once_and_idle_envs_are_not_stepped():
    fns = [functools.partial(CountdownEnv, succeed_at=2)] * 3
    executed = []
    with make_vector_env(fns, 0, obs_history=2) as envs:
        pi = RecordingPolicy()
        res = run_episodes(envs, pi, [10, 11], per_episode_noise=False,
                           on_chunk=lambda obs, chunk, step, active: executed.append(
                               (chunk.shape, active.tolist(), step.infos["executed"].tolist())))
    assert sorted(e.seed for e in res.episodes) == [10, 11]
    assert all(e.success and e.length == 2 and e.episode_return == 2.0 for e in res.episodes)
    assert pi.begun == [10, 11] and pi.shapes == [(3, 2, 2)]
    # one chunk: act_steps (3) of the 5 actions sent, env 2 had no seed and idled, the episodes ended at 2
    assert executed == [((3, 3, 1), [True, True, False], [2, 2, 0])]
    assert res.env_steps == 4


def test_the_expert_gives_the_same_episodes_for_any_env_count():
    """Dense rewards summed over an episode are sensitive to every step: equal returns mean the
    same trajectories, whether an episode ran alone or in a batch, on one worker or two. (In-process
    envs share the test process's multi-threaded BLAS, which rounds IK solves differently: see
    SyncVectorEnv.)"""
    cfg = EnvConfig(randomness="low", max_episode_steps=25, reward="dense")
    seeds = [3, 4, 5]
    runs = []
    for n_envs, n_workers in ((1, 1), (2, 2), (3, 1)):
        with make(cfg, n_envs, n_workers=n_workers) as envs:
            res = run_episodes(envs, ExpertPolicy(n_envs), seeds, per_episode_noise=False)
        runs.append({e.seed: (e.length, e.episode_return, e.milestones) for e in res.episodes})
    assert runs[0] == runs[1] == runs[2]
    assert len({v[1] for v in runs[0].values()}) == 3  # the seeds are different episodes


def test_an_evaluator_keeps_its_envs_and_repeats_itself():
    cfg = EnvConfig(randomness="low", max_episode_steps=12, reward="dense")
    built = []

    def make_envs(history):
        built.append(history)
        return make(cfg, 2, n_workers=2, obs_history=history)

    with Evaluator(make_envs) as ev:
        first = ev.run(ExpertPolicy(2), [7, 8, 9])
        pids = list(ev.envs.worker_pids)
        second = ev.run(ExpertPolicy(2), [7, 8, 9])
        assert ev.envs.worker_pids == pids and built == [1]  # the same worker processes
        assert [e.to_dict() for e in first.episodes] == [e.to_dict() for e in second.episodes]
        assert first.success_rate == 0.0 and first.mean_length == 12
        assert set(first.milestone_rates) == {"top_in_corner", "leg_lifted", "leg_upright", "thread_engaged",
                                              "success"}
    assert ev.envs is None


def test_history_lengths_must_agree():
    with make_vector_env([functools.partial(CountdownEnv, succeed_at=2)], 0, obs_history=1) as envs:
        with pytest.raises(ValueError, match="keep 1 observations"):
            run_episodes(envs, RecordingPolicy(), [1])


def test_the_pixel_reference_policy_runs_through_the_evaluator(tmp_path):
    """Rendered image histories (N, 2, 96, 96, 3) go from the workers' shared memory to the ViT
    policy and its chunks back, reproducibly; a video of env 0's first episode is written."""
    import policy as policy_pkg
    from sim.evaluate import evaluate, make_evaluator
    from tests.conftest import compose_config

    pi = policy_pkg.load("checkpoints/one_leg_pixel_bc.pt")
    cfg = compose_config("eval_policy", ["checkpoint=x", "task.max_episode_steps=6"])
    shown = []
    act = pi.act
    pi.act = lambda obs, **kw: (shown.append({k: v.shape for k, v in obs.items()}), act(obs, **kw))[1]
    with make_evaluator(pi, cfg, n_envs=2, n_workers=2) as ev:
        a = evaluate(ev, pi, episodes=2, video_dir=tmp_path, video_episodes=1)
        b = evaluate(ev, pi, episodes=2)
    assert shown[0] == {"state": (2, 2, 10), "rgb/front": (2, 2, 96, 96, 3), "rgb/wrist": (2, 2, 96, 96, 3)}
    assert [e.length for e in a.episodes] == [6, 6]
    assert [e.to_dict() for e in a.episodes] == [e.to_dict() for e in b.episodes]
    assert (tmp_path / "policy_ep0.mp4").stat().st_size > 1000
