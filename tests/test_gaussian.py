"""The Gaussian-policy PPO baseline: log-probs, the PPO/BC losses by hand, checkpoints through
load_policy, BC pretraining, and the agent's update."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data.episodes import EpisodeWriter
from data.normalizer import Normalizer
from policy.checkpoint import CheckpointError, export_weights, load_policy, save_checkpoint
from policy.gaussian_policy import GaussianPolicy, GaussianPolicyConfig
from policy.rl.critic import Critic, CriticConfig
from policy.rl.dppo import Batch, NonFiniteError, PPOConfig
from policy.rl.gaussian_ppo import GaussianPPOAgent, GaussianPPOConfig

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def norm(seed=0):
    rng = np.random.default_rng(seed)
    return Normalizer.from_arrays({"state": rng.normal(size=(64, 10)), "action": rng.normal(size=(64, 10)),
                                   "action_rel": rng.normal(size=(64, 80))},
                                  {"state": "minmax", "action": "minmax", "action_rel": "minmax"})


def small_policy(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GaussianPolicyConfig(lowdim_keys=["state"], state_dim=10, hidden=32, blocks=1, **kw)
    return GaussianPolicy(cfg, norm()).eval()


def obs_batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"state": torch.randn(b, 2, 10, generator=g)}


def make_agent(ppo=None, gauss=None, seed=0, **policy_kw):
    actor = small_policy(seed, **policy_kw)
    critic = Critic(CriticConfig(hidden=32, blocks=1), actor.lowdim_keys, actor.cameras, actor.image_hw,
                    actor.obs_history, actor.normalizer, {"state": 10})
    return GaussianPPOAgent(actor, critic, ppo or PPOConfig(), gauss or GaussianPPOConfig(), total_iterations=10)


# --- log-probabilities ---------------------------------------------------------------------------
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_log_prob_is_the_normal_density_of_the_executed_actions_and_recomputes_exactly(reduce):
    p = small_policy(init_std=0.1)
    with torch.no_grad():
        p.log_std.copy_(torch.linspace(-4.0, -1.0, 10))  # std 0.018 .. 0.2 (max_std 0.2): per-dim values
    obs = obs_batch()
    x, lp = p.sample(obs, generator=torch.Generator().manual_seed(1), reduce=reduce)
    assert x.shape == (6, 8, 10) and lp.shape == (6,)
    torch.testing.assert_close(p.log_prob(obs, x, reduce), lp, rtol=0, atol=1e-5)
    # by hand: Normal(mean, clamped std) over chunk indices exec_start .. exec_start + act_steps - 1 = 1 .. 4
    with torch.no_grad():
        std = torch.exp(torch.linspace(-4.0, -1.0, 10)).clamp(0.01, 0.2)
        ref = torch.distributions.Normal(p.mean(obs), std).log_prob(x)[:, 1:5]
    ref = ref.mean(dim=(1, 2)) if reduce == "mean" else ref.sum(dim=(1, 2))
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-5)
    # the indices that are never executed do not count
    x2 = x.clone()
    x2[:, 0] += 1.0
    x2[:, 5:] -= 1.0
    torch.testing.assert_close(p.log_prob(obs, x2, reduce), lp, rtol=0, atol=1e-6)
    x2[:, 4] += 0.1
    assert (p.log_prob(obs, x2, reduce) < lp).all()


def test_agent_explore_and_recomputed_log_probs_agree():
    agent = make_agent()
    obs = obs_batch(b=5)
    actions, sample, lp = agent.explore(obs, torch.Generator().manual_seed(3))
    assert actions.dtype == np.float32 and actions.shape == (5, 4, 10) and np.isfinite(actions).all()
    assert sample.dtype == torch.float32 and sample.shape == (5, *agent.sample_shape) == (5, 1, 8, 10)
    assert lp.shape == (5, agent.n_log_probs) == (5, 1)
    torch.testing.assert_close(agent.log_probs(obs, sample), lp, rtol=0, atol=1e-5)
    # the executed actions are the sample's, clamped to [-1, 1] and decoded (rotations orthonormal)
    dec = agent.actor.executed(sample[:, 0], obs)[:, :4].numpy()
    np.testing.assert_allclose(actions[..., [0, 1, 2, 9]], dec[..., [0, 1, 2, 9]], atol=1e-5)
    r = actions[..., 3:9]
    np.testing.assert_allclose(np.linalg.norm(r[..., :3], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose((r[..., :3] * r[..., 3:]).sum(-1), 0.0, atol=1e-5)
    # the clamp to the normalised action range belongs to executing a sample, not to the sample
    wide = 5.0 * sample[:, 0]
    assert wide.abs().max() > 1.0
    torch.testing.assert_close(agent.actor.executed(wide, obs), agent.actor.executed(wide.clamp(-1, 1), obs))
    # a fixed generator reproduces the draw; noise clipped at 3 std
    _, again, _ = agent.explore(obs, torch.Generator().manual_seed(3))
    assert torch.equal(again, sample)
    z = (sample[:, 0] - agent.actor.mean(obs)) / agent.actor.std()
    assert z.abs().max() <= 3.0 + 1e-4


def test_act_is_the_deterministic_mean_and_ignores_sampling_options():
    p = small_policy()
    obs = {"state": obs_batch(b=3)["state"].numpy()}
    a = p.act(obs)
    b = p.act(obs, generator=[torch.Generator().manual_seed(i) for i in range(3)], steps=5, eta=0.0)
    assert a.shape == (3, 7, 10) and a.dtype == np.float32  # horizon - obs_history + 1
    np.testing.assert_array_equal(a, b)
    t = {"state": torch.as_tensor(obs["state"])}
    with torch.no_grad():
        expect = p.executed(p.mean(t), t).numpy()
    np.testing.assert_allclose(a[..., :3], expect[..., :3], atol=1e-6)


# --- the PPO loss, the BC term -------------------------------------------------------------------
def test_policy_loss_matches_a_hand_computation():
    agent = make_agent(ppo=PPOConfig(clip=0.1, norm_adv=False))
    new = torch.tensor([0.0, 0.3, -0.2, 0.05])
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 2.0, -1.0, -3.0])
    loss, stats = agent.policy_loss(new, old, adv)
    r = [math.exp(v) for v in new.tolist()]
    terms = [max(-a * ri, -a * min(max(ri, 0.9), 1.1)) for a, ri in zip(adv.tolist(), r)]
    assert float(loss) == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert float(stats["clipfrac"]) == pytest.approx(0.5)
    assert float(stats["approx_kl"]) == pytest.approx(np.mean([(ri - 1) - math.log(ri) for ri in r]), rel=1e-5)
    # normalised advantages: (adv - mean) / std (unbiased)
    agent.ppo.norm_adv = True
    loss_n, _ = agent.policy_loss(new, old, adv)
    z = ((adv - adv.mean()) / adv.std()).tolist()
    assert float(loss_n) == pytest.approx(np.mean([max(-a * ri, -a * min(max(ri, 0.9), 1.1))
                                                   for a, ri in zip(z, r)]), rel=1e-5)


def test_bc_loss_is_the_expected_nll_of_the_base_policys_samples():
    agent = make_agent(ppo=PPOConfig(bc_coef=0.5))
    obs = obs_batch(b=4)
    with torch.no_grad():
        for prm in agent.actor.parameters():
            prm.add_(0.01 * torch.randn_like(prm))
            agent.actor.log_std.add_(0.3)
        mean = agent.actor.mean(obs)
        closed = float(agent.bc_loss(obs, mean))
        # Monte Carlo: base samples scored by the fine-tuned policy (the reference's form)
        g = torch.Generator().manual_seed(0)
        draws = torch.stack([-agent.actor.log_prob(obs, agent.base.sample(obs, generator=g, noise_clip=None)[0])
                             for _ in range(500)]).flatten()
    mc, se = float(draws.mean()), float(draws.std() / math.sqrt(draws.numel()))
    assert abs(closed - mc) < 4 * se and se < 0.01 * abs(mc), (closed, mc, se)
    # a wrong closed form (e.g. without the base's own variance) is far outside that band
    with torch.no_grad():
        assert abs(float(fresh_minus_var(agent, obs, mean)) - mc) > 20 * se
    # at the pretrained weights it is the base's own entropy
    fresh = make_agent(ppo=PPOConfig(bc_coef=0.5))
    with torch.no_grad():
        ent = fresh.bc_loss(obs, fresh.actor.mean(obs))
        assert float(ent) == pytest.approx(float(fresh.actor.entropy()), rel=1e-5)


def fresh_minus_var(agent, obs, mean):
    """The BC term without the base variance term (a plausible mistake the test must reject)."""
    s, s_b = agent.actor.std(), agent.base.std()
    return agent.bc_loss(obs, mean) - (s_b ** 2 / (2 * s ** 2)).mean()


# --- update ---------------------------------------------------------------------------------------
def rollout_batch(agent, m=24, seed=0):
    obs = obs_batch(b=m, seed=seed)
    _, sample, lp = agent.explore(obs, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    return Batch(obs=obs, chains=sample, advantages=torch.randn(m, generator=g), returns=torch.randn(m, generator=g),
                 values=torch.zeros(m)), lp


def test_update_changes_the_actor_and_std_and_keeps_weights_finite():
    agent = make_agent(ppo=PPOConfig(clip=0.2, actor_lr=1e-3, actor_warmup=0, batch_size=8, update_epochs=3,
                                     bc_coef=0.1), gauss=GaussianPPOConfig(ent_coef=0.01))
    before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    critic_before = [q.clone() for q in agent.critic.parameters()]
    batch, lp = rollout_batch(agent)
    m = agent.update(batch, iteration=0)
    torch.testing.assert_close(batch.old_log_probs, lp, rtol=0, atol=1e-5)  # prepare recomputed them
    for key in ("policy_loss", "value_loss", "approx_kl", "clipfrac", "explained_variance", "actor_lr", "critic_lr",
                "minibatches", "skipped_minibatches", "early_stop", "std", "bc_loss", "entropy"):
        assert key in m and np.isfinite(m[key]), key
    assert m["minibatches"] == 9 and m["skipped_minibatches"] == 0  # 3 epochs x ceil(24 / 8)
    after = agent.actor.state_dict()
    assert not torch.equal(before["out.weight"], after["out.weight"])
    assert not torch.equal(before["log_std"], after["log_std"])
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, agent.critic.parameters()))
    assert agent.weights_finite()
    assert m["std"] == pytest.approx(float(agent.actor.std().detach().mean()))


def test_critic_warmup_and_fixed_std_leave_what_they_should_alone():
    agent = make_agent(ppo=PPOConfig(critic_warmup=2, batch_size=12, actor_warmup=0),
                       gauss=GaussianPPOConfig(learn_std=False))
    before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    batch, _ = rollout_batch(agent)
    m = agent.update(batch, iteration=0)
    assert m["actor_lr"] == 0.0
    for k, v in agent.actor.state_dict().items():
        assert torch.equal(before[k], v), k
    agent.update(batch, iteration=2)
    after = agent.actor.state_dict()
    assert not torch.equal(before["out.weight"], after["out.weight"])
    assert torch.equal(before["log_std"], after["log_std"])  # learn_std=False


def test_target_kl_stops_the_epochs_early():
    agent = make_agent(ppo=PPOConfig(clip=0.2, actor_lr=5e-2, actor_warmup=0, batch_size=6, update_epochs=5,
                                     target_kl=1e-6))
    batch, _ = rollout_batch(agent)
    m = agent.update(batch, iteration=0)
    assert m["early_stop"] == 1.0 and m["minibatches"] < 20


def test_nonfinite_minibatches_are_skipped_then_stop_the_run():
    agent = make_agent(ppo=PPOConfig(batch_size=6, update_epochs=1, max_nonfinite=3, actor_warmup=0))
    batch, _ = rollout_batch(agent)
    before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    batch.advantages[0] = float("nan")
    m = agent.update(batch, iteration=0)  # the one minibatch holding row 0 is skipped
    assert m["skipped_minibatches"] == 1 and m["minibatches"] == 3 and agent.weights_finite()
    batch.advantages[:] = float("nan")
    with pytest.raises(NonFiniteError):
        agent.update(batch, iteration=1)
    assert agent.weights_finite()
    assert not torch.equal(before["out.weight"], agent.actor.state_dict()["out.weight"])


# --- checkpoints ----------------------------------------------------------------------------------
def test_checkpoint_round_trip_through_load_policy_acts_identically(tmp_path):
    p = small_policy(seed=3)
    with torch.no_grad():
        p.log_std.fill_(math.log(0.05))
    path = save_checkpoint(tmp_path / "g.pt", p, schema={"task": "one_leg"})
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["policy_class"] == "gaussian"
    q = load_policy(path)
    assert isinstance(q, GaussianPolicy) and not q.training
    assert q.cfg == p.cfg and q.obs_schema.state_dim == 10 and q.schema["task"] == "one_leg"
    obs = {"state": obs_batch(b=4, seed=5)["state"].numpy()}
    np.testing.assert_array_equal(p.act(obs), q.act(obs))
    assert torch.equal(q.log_std, p.log_std)
    small = export_weights(path, tmp_path / "small.pt", note="test")
    np.testing.assert_array_equal(load_policy(small).act(obs), p.act(obs))


def test_load_policy_dispatch_keeps_diffusion_checkpoints_and_refuses_unknown_classes(tmp_path):
    from policy.diffusion_policy import DiffusionPolicy
    from tests.test_policy import normalizer, small_cfg

    d = DiffusionPolicy(small_cfg(cameras=()), normalizer())
    path = save_checkpoint(tmp_path / "d.pt", d)
    assert "policy_class" not in torch.load(path, weights_only=True)["config"]
    assert isinstance(load_policy(path), DiffusionPolicy)
    g = save_checkpoint(tmp_path / "g.pt", small_policy())
    payload = torch.load(g, weights_only=True)
    payload["config"]["policy_class"] = "flow"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="unknown policy_class 'flow'"):
        load_policy(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not a Gaussian policy"):
        GaussianPPOAgent.from_checkpoint(path, CriticConfig(), PPOConfig(), GaussianPPOConfig(), 10)


def test_agent_from_checkpoint_and_its_state_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "g.pt", small_policy())
    agent = GaussianPPOAgent.from_checkpoint(path, CriticConfig(hidden=32, blocks=1), PPOConfig(batch_size=12),
                                             GaussianPPOConfig(), total_iterations=10, seed=1)
    assert agent.critic.lowdim_keys == ("state",) and agent.obs_keys == ("state",)
    batch, _ = rollout_batch(agent)
    agent.update(batch, iteration=0)
    out = agent.save(tmp_path / "ft.pt", {"kind": "finetune", "agent": agent.state_dict()}, agent.actor.schema, {})
    other = GaussianPPOAgent.from_checkpoint(path, CriticConfig(hidden=32, blocks=1), PPOConfig(batch_size=12),
                                             GaussianPPOConfig(), total_iterations=10, seed=9)
    payload = torch.load(out, weights_only=True)
    other.load_actor(payload)
    other.load_state_dict(payload["train"]["agent"])
    for a, b in zip((*agent.actor.parameters(), *agent.critic.parameters()),
                    (*other.actor.parameters(), *other.critic.parameters())):
        assert torch.equal(a, b)
    assert torch.equal(agent.generator.get_state(), other.generator.get_state())
    assert isinstance(load_policy(out), GaussianPolicy)


# --- BC pretraining -------------------------------------------------------------------------------
def tiny_dataset(path):
    """Demos on smooth trajectories (the next pose is the action: learnable from two observations),
    with part poses."""
    w = EpisodeWriter.create(path, attrs={"task": "one_leg"})
    rng = np.random.default_rng(0)
    for i in range(4):
        t = 24
        k = np.arange(t + 1)[:, None]
        pose = np.zeros((t + 1, 10), np.float32)
        pose[:, :3] = 0.05 * np.concatenate([np.sin(0.3 * k + i), np.cos(0.3 * k + i), 0.1 * k], axis=1)
        pose[:, 3:9] = [1, 0, 0, 0, 1, 0]
        pose[:, 9] = 0.04 * (k[:, 0] > t // 2)
        w.add_episode({"state": pose[:-1], "parts": rng.normal(size=(t, 18)).astype(np.float32), "action": pose[1:]},
                      success=True, source="scripted", seed=i)
    return path


def test_bc_pretraining_reduces_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    from tests.conftest import compose_config
    from policy.pretrain_gaussian import GaussianTrainer

    tiny_dataset(tmp_path / "tiny.zarr")
    cfg = compose_config("pretrain_gaussian", [f"dataset={tmp_path / 'tiny.zarr'}", f"out_dir={tmp_path / 'run'}",
                                               "policy.hidden=32", "policy.blocks=1", "train.steps=60",
                                               "train.batch_size=16", "train.warmup_steps=5", "train.lr=3e-3",
                                               "train.log_every=10", "train.val_every=30", "train.save_every=30",
                                               "data.val_ratio=0.25", "device=cpu"])
    tr = GaussianTrainer(cfg)
    assert tr.pcfg.state_dim == 28 and tr.pcfg.action_dim == 10  # state + 2 part poses, from the dataset
    fixed = tr.batches.batch(torch.arange(32))
    with torch.no_grad():
        start = float(tr.policy.loss(fixed["obs"], fixed["action"]))
    log_std = tr.policy.log_std.clone()
    tr.train()
    with torch.no_grad():
        end = float(tr.policy.loss(fixed["obs"], fixed["action"]))
    assert end < 0.5 * start, (start, end)
    assert torch.equal(tr.policy.log_std, log_std)  # BC leaves the std to fine-tuning
    losses = [h["train_loss"] for h in tr.history if "train_loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]
    p = load_policy(tmp_path / "run" / "last.pt")
    assert isinstance(p, GaussianPolicy) and p.obs_keys == ("state", "parts")
    assert "parts" in p.normalizer and "action_rel" in p.normalizer
    # tools/eval_policy.py takes it through load_policy: state envs with part poses
    from tools.eval_policy import run

    ev = compose_config("eval_policy", [f"checkpoint={tmp_path / 'run' / 'last.pt'}", "episodes=1", "env.n_envs=1",
                                        "env.n_workers=0", "task.max_episode_steps=6", "video.enabled=false"])
    summary = run(ev, tmp_path)
    assert summary["obs"] == "state" and summary["n_episodes"] == 1


def test_the_rollout_buffer_stores_what_the_agent_explores_and_the_update_reads_it():
    """As sim/finetune.py's collect/iterate use it: sample_shape and n_log_probs size the buffer."""
    from policy.rl.buffer import ObsSpec, RolloutBuffer

    agent = make_agent(ppo=PPOConfig(batch_size=8, actor_warmup=0))
    t, n = 3, 4
    buf = RolloutBuffer(t, n, {"state": ObsSpec((2, 10), torch.float32)}, agent.sample_shape,
                        n_log_probs=agent.n_log_probs)
    gen = torch.Generator().manual_seed(0)
    for step in range(t):
        stored = buf.put_obs(step, {"state": obs_batch(b=n, seed=step)["state"].numpy()})
        _, sample, lp = agent.explore({k: stored[k] for k in agent.actor.obs_keys}, gen)
        buf.chains[step].copy_(sample)
        buf.sample_log_probs[step].copy_(lp)
    batch = Batch(obs=buf.flat_obs(), chains=buf.chains.reshape(-1, *buf.chains.shape[2:]),
                  advantages=torch.randn(t * n), returns=torch.randn(t * n), values=torch.zeros(t * n))
    agent.prepare(batch)
    err = (batch.old_log_probs - buf.sample_log_probs.reshape(batch.old_log_probs.shape)).abs().max()
    assert float(err) < 1e-5
    assert agent.update(batch, iteration=0)["minibatches"] == 5 * 2  # update_epochs 5 x ceil(12 / 8)
