"""sim.chunk.execute_chunk on torch tensors: the path a GPU backend (all worlds in one call)
takes, checked against the CPU vector env on the same countdown task."""
import functools

import numpy as np
import torch

from data.history import ObsHistory
from sim.chunk import StepOut, execute_chunk
from sim.vector_env import make_vector_env
from tests.test_vector_env import CountdownEnv


class TorchCountdown:
    """Batched twin of CountdownEnv: reward 1 per step, success at `succeed_at`, time limit 3."""

    def __init__(self, succeed_at):
        self.succeed_at = torch.tensor(succeed_at)
        self.num_envs = len(succeed_at)
        self.steps = torch.zeros(self.num_envs, dtype=torch.int64)
        self.seed = torch.arange(self.num_envs) + 10

    def obs(self):
        return {"state": torch.stack([self.steps.float(), self.seed.float()], -1)}

    def step_masked(self, actions, active, reset_seeds):
        self.steps = torch.where(active, self.steps + 1, self.steps)
        success = active & (self.steps == self.succeed_at)
        truncated = active & (self.steps >= 3) & ~success
        final = self.obs()
        done = success | truncated
        self.steps = torch.where(done, torch.zeros_like(self.steps), self.steps)
        self.seed = torch.where(done, reset_seeds, self.seed)
        return StepOut(self.obs(), active.float(), success, truncated, final, {"success": success})


def test_execute_chunk_on_torch_matches_the_cpu_vector_env():
    succeed_at = [2, 99, 99]
    sim = TorchCountdown(succeed_at)
    history, final = ObsHistory(2, ["state"]), ObsHistory(2, ["state"])
    history.reset(sim.obs())
    final.reset(sim.obs())
    chunk = torch.zeros(3, 4, 1)
    active = torch.tensor([True, True, False])
    seeds = torch.tensor([50, -1, -1])
    reward, terminated, truncated, infos = execute_chunk(sim, history, final, chunk, active, seeds)

    fns = [functools.partial(CountdownEnv, succeed_at=s) for s in succeed_at]
    with make_vector_env(fns, 0, obs_history=2) as venv:
        venv.reset(seeds=[10, 11, 12])
        ref = venv.step(np.zeros((3, 4, 1), np.float32), active=active.numpy(), reset_seeds=seeds.numpy())
    np.testing.assert_array_equal(reward.numpy(), ref.reward)
    np.testing.assert_array_equal(terminated.numpy(), ref.terminated)
    np.testing.assert_array_equal(truncated.numpy(), ref.truncated)
    np.testing.assert_array_equal(infos["executed"].numpy(), ref.infos["executed"])
    np.testing.assert_array_equal(infos["success"].numpy(), ref.infos["success"])
    np.testing.assert_array_equal(history.buffers["state"][:, :, 0].numpy(), ref.obs["state"][:, :, 0])
    done = (terminated | truncated).numpy()
    np.testing.assert_array_equal(final.buffers["state"][done].numpy(), ref.infos["final_obs"]["state"][done])
