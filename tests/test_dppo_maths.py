"""DPPO's maths on fixed tensors: GAE with episode ends inside a rollout, the clipped
denoising-step loss, the clip schedule (K' = 1), reward scaling, log-prob recomputation, and
the non-finite guard."""
import math

import numpy as np
import pytest
import torch

from policy.diffusion_policy import DiffusionPolicy, LogProbSpec
from policy.rl.critic import Critic, CriticConfig
from policy.rl.dppo import Batch, ChainConfig, DPPOAgent, NonFiniteError, PPOConfig
from policy.rl.gae import gae, next_values
from policy.rl.reward_scaler import RunningRewardScaler
from policy.rl.schedules import clip_coefficients, warmup_cosine
from tests.test_policy import batch, normalizer, small_cfg


def test_gae_with_a_termination_and_a_truncation_inside_one_rollout():
    # one env, 5 chunk steps: episode A ends terminated at t=1, episode B truncated at t=3
    # (true final obs valued 0.7), episode C runs past the rollout (bootstrap V(obs_5) = 0.9)
    r = torch.tensor([[0.0], [1.0], [0.5], [0.2], [0.0]])
    v = torch.tensor([[0.1], [0.2], [0.3], [0.4], [0.5]])
    term = torch.tensor([[0], [1], [0], [0], [0]], dtype=torch.bool)
    trunc = torch.tensor([[0], [0], [0], [1], [0]], dtype=torch.bool)
    final = torch.tensor([[0.0], [0.0], [0.0], [0.7], [0.0]])
    g, lam = 0.9, 0.8
    done = term | trunc
    nv = next_values(v, torch.tensor([0.9]), final, done)
    assert nv.flatten().tolist() == pytest.approx([0.2, 0.0, 0.4, 0.7, 0.9])
    adv, ret = gae(r, v, nv, term, done, g, lam)
    # by hand, back to front
    d4 = 0.0 + g * 0.9 - 0.5
    a4 = d4
    d3 = 0.2 + g * 0.7 - 0.4  # truncated: bootstrap from the final obs, recursion stops
    a3 = d3
    d2 = 0.5 + g * 0.4 - 0.3
    a2 = d2 + g * lam * a3
    d1 = 1.0 + 0.0 - 0.2  # terminated: no bootstrap
    a1 = d1
    d0 = 0.0 + g * 0.2 - 0.1
    a0 = d0 + g * lam * a1
    expect = [a0, a1, a2, a3, a4]
    assert adv.flatten().tolist() == pytest.approx(expect, abs=1e-7)
    assert ret.flatten().tolist() == pytest.approx([a + b for a, b in zip(expect, v.flatten().tolist())], abs=1e-7)


def test_gae_never_crosses_an_episode_end():
    """Changing anything after an episode's end leaves that episode's advantages unchanged."""
    g = torch.Generator().manual_seed(0)
    r, v = torch.rand(6, 3, generator=g), torch.rand(6, 3, generator=g)
    term = torch.zeros(6, 3, dtype=torch.bool)
    term[2] = True
    done = term.clone()
    nv = next_values(v, torch.rand(3, generator=g), torch.zeros(6, 3), done)
    a, _ = gae(r, v, nv, term, done, 0.99, 0.95)
    r2, v2 = r.clone(), v.clone()
    r2[3:] += 5.0
    v2[3:] -= 2.0
    nv2 = next_values(v2, torch.rand(3, generator=g), torch.zeros(6, 3), done)
    a2, _ = gae(r2, v2, nv2, term, done, 0.99, 0.95)
    torch.testing.assert_close(a[:3], a2[:3], rtol=0, atol=0)


def test_clip_schedule_is_finite_for_one_fine_tuned_step():
    assert clip_coefficients(1, 0.01, clip_base=1e-4) == [0.01]  # the reference: i / (K' - 1) = NaN
    c = clip_coefficients(5, 0.01, clip_base=1e-4, rate=3.0)
    assert c[0] == pytest.approx(1e-4) and c[-1] == pytest.approx(0.01)
    assert all(x < y for x, y in zip(c, c[1:]))
    assert clip_coefficients(3, 0.02) == [0.02] * 3
    assert warmup_cosine(0, 1.0, 0.1, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(4, 1.0, 0.1, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(20, 1.0, 0.1, 4, 20) == pytest.approx(0.1)


def make_agent(ft_steps=5, ppo=None, seed=0):
    torch.manual_seed(seed)
    cfg = small_cfg(cameras=())
    actor = DiffusionPolicy(cfg, normalizer())
    critic = Critic(CriticConfig(hidden=32, blocks=1), actor.lowdim_keys, actor.cameras, actor.image_hw,
                    actor.obs_history, actor.normalizer, {"state": 10})
    return DPPOAgent(actor, critic, ChainConfig(ft_steps=ft_steps), ppo or PPOConfig(), total_iterations=10)


def test_policy_loss_matches_hand_computed_ratio_clip_and_denoising_discount():
    agent = make_agent(ft_steps=2, ppo=PPOConfig(clip=0.1, gamma_denoising=0.5, norm_adv=False))
    new = torch.tensor([0.0, 0.3, -0.2, 0.05])
    old = torch.tensor([0.0, 0.0, 0.0, 0.0])
    adv = torch.tensor([1.0, 2.0, -1.0, -3.0])
    k = torch.tensor([1, 1, 0, 0])  # k = K' - 1 produces the action: factor 1; k = 0: factor 0.5
    loss, stats = agent.policy_loss(new, old, adv, k)
    ratio = [math.exp(x) for x in new.tolist()]
    a = [1.0, 2.0, -0.5, -1.5]
    terms = [max(-ai * r, -ai * min(max(r, 0.9), 1.1)) for ai, r in zip(a, ratio)]
    assert float(loss) == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert float(stats["clipfrac"]) == pytest.approx(0.5)  # 0.3 and -0.2 leave [0.9, 1.1]
    kl = np.mean([(r - 1) - math.log(r) for r in ratio])
    assert float(stats["approx_kl"]) == pytest.approx(kl, rel=1e-5)


def test_policy_loss_normalises_advantages_over_the_minibatch():
    agent = make_agent(ft_steps=1, ppo=PPOConfig(clip=0.2))
    adv = torch.tensor([1.0, 3.0])
    new = torch.tensor([0.01, 0.0])
    loss, _ = agent.policy_loss(new, torch.zeros(2), adv, torch.zeros(2, dtype=torch.long))
    z = [(1 - 2) / math.sqrt(2), (3 - 2) / math.sqrt(2)]  # unbiased std of [1, 3] is sqrt(2)
    r = [math.exp(0.01), 1.0]
    assert float(loss) == pytest.approx(np.mean([max(-zi * ri, -zi * min(max(ri, 0.8), 1.2))
                                                 for zi, ri in zip(z, r)]), rel=1e-5)


@pytest.mark.parametrize("ft_steps", [1, 5])
def test_recomputed_log_probs_equal_the_sampling_time_ones(ft_steps):
    agent = make_agent(ft_steps=ft_steps)
    obs = batch(b=6, cams=())
    actions, chain, lp = agent.explore(obs, torch.Generator().manual_seed(1))
    assert actions.dtype == np.float32 and actions.shape == (6, 4, 10)
    assert chain.dtype == torch.float32 and chain.shape == (6, ft_steps + 1, 8, 10)
    recomputed = agent.log_probs(obs, chain)
    assert recomputed.shape == (6, ft_steps)
    torch.testing.assert_close(recomputed, lp, rtol=0, atol=1e-5)
    assert (agent.base is None) == (ft_steps == 5)  # the frozen copy only where it is used


def test_frozen_base_runs_the_early_steps_when_only_the_last_is_fine_tuned():
    agent = make_agent(ft_steps=1)
    obs = batch(b=2, cams=())
    noise = torch.randn(2, 8, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in agent.actor.denoiser.parameters():
            p.add_(0.05)
        mixed = agent.actor.sample_chain(obs, steps=5, eta=0.0, ft_steps=1, noise=noise, base=agent.base)
        base_only = agent.base.sample_chain(obs, steps=5, eta=0.0, ft_steps=1, noise=noise)
        actor_only = agent.actor.sample_chain(obs, steps=5, eta=0.0, ft_steps=1, noise=noise, base=agent.actor)
        default = agent.actor.sample_chain(obs, steps=5, eta=0.0, ft_steps=1, noise=noise)
    torch.testing.assert_close(default.chain, mixed.chain, rtol=0, atol=0)  # the actor's own frozen base
    torch.testing.assert_close(mixed.chain[:, 0], base_only.chain[:, 0])  # x before the policy step
    assert not torch.allclose(mixed.chain[:, 0], actor_only.chain[:, 0])
    assert not torch.allclose(mixed.chain[:, 1], base_only.chain[:, 1])  # the policy step is the actor's


def rollout_batch(agent, m=12, seed=0):
    obs = batch(b=m, cams=(), seed=seed)
    _, chain, lp = agent.explore(obs, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    return Batch(obs=obs, chains=chain, advantages=torch.randn(m, generator=g), returns=torch.randn(m, generator=g),
                 values=torch.zeros(m))


def test_one_fine_tuned_step_gives_finite_losses_and_clipping_that_acts():
    agent = make_agent(ft_steps=1, ppo=PPOConfig(clip=0.001, actor_lr=1e-3, batch_size=12, update_epochs=4,
                                                 actor_warmup=0))
    out = agent.update(rollout_batch(agent), iteration=0)
    assert all(math.isfinite(out[k]) for k in ("policy_loss", "value_loss", "approx_kl", "clipfrac"))
    assert out["clipfrac"] > 0  # later epochs move the ratio outside 1 +- 0.001 and the clip engages
    assert out["skipped_minibatches"] == 0


def test_critic_warmup_leaves_the_actor_unchanged():
    agent = make_agent(ppo=PPOConfig(critic_warmup=1, batch_size=20))
    before = [p.clone() for p in agent.actor.parameters()]
    c_before = [p.clone() for p in agent.critic.parameters()]
    agent.update(rollout_batch(agent), iteration=0)
    assert all(torch.equal(a, b) for a, b in zip(before, agent.actor.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(c_before, agent.critic.parameters()))
    agent.update(rollout_batch(agent), iteration=1)
    assert not all(torch.equal(a, b) for a, b in zip(before, agent.actor.parameters()))


def test_target_kl_stops_the_epochs_early():
    agent = make_agent(ppo=PPOConfig(target_kl=1e-12, actor_lr=1e-3, actor_warmup=0, batch_size=10, update_epochs=5))
    out = agent.update(rollout_batch(agent), iteration=0)
    assert out["early_stop"] == 1.0 and out["minibatches"] < 5 * 6


def test_non_finite_losses_are_skipped_then_stop_the_run():
    agent = make_agent(ppo=PPOConfig(max_nonfinite=3, batch_size=20, update_epochs=1))
    b = rollout_batch(agent)
    before = [p.clone() for p in agent.actor.parameters()]
    b.returns[0] = float("nan")  # every minibatch holding env step 0 has a NaN value loss
    with pytest.raises(NonFiniteError, match="consecutive"):
        agent.update(b, iteration=0)
    assert all(torch.isfinite(p).all() for p in agent.actor.parameters())
    b2 = rollout_batch(agent)
    agent2 = make_agent(ppo=PPOConfig(max_nonfinite=100, batch_size=60, update_epochs=2))
    b2.returns[0] = float("nan")
    out = agent2.update(b2, iteration=0)
    assert out["skipped_minibatches"] == 2 and out["minibatches"] == 0  # one minibatch per epoch, all skipped
    assert all(torch.equal(a, b) for a, b in zip([p for p in make_agent().actor.parameters()],
                                                 agent2.actor.parameters()))
    del before


def test_running_reward_scaler_divides_by_the_discounted_return_std():
    s = RunningRewardScaler(n_envs=1, gamma=0.5, clip=100.0)
    r = torch.tensor([[1.0], [1.0], [1.0]])
    done = torch.tensor([[False], [True], [False]])
    out = s(r, done)
    rets = [1.0, 1.5, 1.0]  # the return resets after the episode end at t=1
    expect = []
    seen = []
    for g in rets:
        seen.append(g)
        # running variance with the initial pseudo-count 1e-4 at mean 0, var 1
        n0, m0, v0 = 1e-4, 0.0, 1.0
        n = n0 + len(seen)
        mean = (n0 * m0 + sum(seen)) / n
        m2 = v0 * n0 + sum((x - np.mean(seen)) ** 2 for x in seen) + (np.mean(seen) - m0) ** 2 * n0 * len(seen) / n
        expect.append(1.0 / math.sqrt(m2 / n + 1e-8))
    assert out.flatten().tolist() == pytest.approx(expect, rel=1e-4)
    st = s.state_dict()
    s2 = RunningRewardScaler(1, 0.5, 100.0)
    s2.load_state_dict(st)
    torch.testing.assert_close(s2(r, done), s(r, done))


def test_a_policy_fine_tuned_on_its_last_step_keeps_its_frozen_early_steps_in_the_checkpoint(tmp_path):
    from policy.checkpoint import load_policy, obs_schema_for, save_checkpoint, schema_to_dict
    from data.schema import ActionSchema

    agent = make_agent(ft_steps=1)
    with torch.no_grad():
        for p in agent.actor.denoiser.parameters():
            p.add_(0.05)  # "fine-tuned"
    assert agent.actor.cfg.frozen_steps == 4 and agent.base is agent.actor.frozen_base
    assert all(not p.requires_grad for p in agent.actor.frozen_base.parameters())
    assert len(agent.actor_params) < len(list(agent.actor.parameters()))
    schema = schema_to_dict(obs_schema_for((), (32, 32), ["state"], 10), ActionSchema())
    save_checkpoint(tmp_path / "ft.pt", agent.actor, schema=schema)
    loaded = load_policy(tmp_path / "ft.pt")
    assert loaded.cfg.frozen_steps == 4 and loaded.frozen_base is not None
    obs = batch(b=2, cams=())
    noise = torch.randn(2, 8, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expect = agent.actor.sample_chain(obs, steps=5, eta=0.0, ft_steps=1, noise=noise, base=agent.base).chain
        all_tuned = agent.actor.sample_chain(obs, steps=5, eta=0.0, ft_steps=1, noise=noise,
                                             base=agent.actor).chain
        got = loaded.sample_chain(obs, steps=5, eta=0.0, ft_steps=1, noise=noise).chain
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
    assert not torch.allclose(got, all_tuned)
    with pytest.raises(ValueError, match="exactly those"):
        loaded.sample_chain(obs, steps=10, eta=0.0)


def test_dppo_moves_a_pretrained_chain_toward_the_rewarded_action():
    """A one-state bandit: reward = -|first executed action dim - 0.5| (normalised). A policy
    cloned toward 0 must, by DPPO updates alone, move its deterministic (eta 0) action to 0.5."""
    agent = make_agent(ft_steps=5, ppo=PPOConfig(actor_lr=1e-4, actor_warmup=0, batch_size=640, update_epochs=3, clip=0.01))
    obs = {k: v[:1].repeat(256, *[1] * (v.dim() - 1)) for k, v in batch(b=1, cams=(), seed=0).items()}
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(agent.actor.parameters(), 1e-3)
    raw = agent.actor.normalizer.unnormalize("action", 0.05 * torch.randn(256, 8, 10, generator=g))
    for _ in range(300):  # "pretraining": BC toward the zero action
        loss = agent.actor.loss(obs, raw)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def deterministic():
        with torch.no_grad():
            return float(agent.actor.sample_chain(obs, steps=5, eta=0.0, noise=torch.zeros(256, 8, 10)).chain[0, -1, 1:5, 0]
                         .mean())

    before = deterministic()
    for it in range(10):
        _, chain, _ = agent.explore(obs, g)
        r = -(chain[:, -1, 1:5, 0] - 0.5).abs().mean(1)
        agent.update(Batch(obs=obs, chains=chain, advantages=r - r.mean(), returns=r, values=torch.zeros(256)), it)
    after = deterministic()
    assert abs(before) < 0.2 and after - before > 0.3 and after < 0.6, (before, after)


def test_buffer_memory_figures_match_what_is_allocated():
    """The benchmark's memory column (`nbytes_for`, without allocating) equals what a buffer
    allocates; images stay uint8 and chains float32, 1/8 and 1/2 of the reference's float64."""
    from policy.rl.buffer import ObsSpec, RolloutBuffer, reference_float64_nbytes

    specs = {"state": ObsSpec((2, 10), torch.float32), "rgb/front": ObsSpec((2, 32, 32, 3), torch.uint8)}
    buf = RolloutBuffer(7, 3, specs, (6, 8, 10))
    assert buf.obs["rgb/front"].dtype == torch.uint8 and buf.chains.dtype == torch.float32
    assert RolloutBuffer.nbytes_for(7, 3, specs, (6, 8, 10), 5) == buf.nbytes()
    images_only = {"rgb/front": specs["rgb/front"]}
    ratio = RolloutBuffer.nbytes_for(7, 3, images_only, (1, 1, 1), 0) / reference_float64_nbytes(7, 3, images_only,
                                                                                               (1, 1, 1))
    assert ratio < 0.13


def _drift_under_noise_advantages(bc_coef: float) -> float:
    """Deterministic-action change of a cloned chain after DPPO updates on pure-noise advantages
    (a rollout that carries no signal), with the BC term toward the base at `bc_coef`."""
    agent = make_agent(ft_steps=5, ppo=PPOConfig(actor_lr=3e-4, actor_warmup=0, batch_size=640, update_epochs=3,
                                                 clip=0.01, bc_coef=bc_coef))
    obs = {k: v[:1].repeat(128, *[1] * (v.dim() - 1)) for k, v in batch(b=1, cams=(), seed=0).items()}

    def deterministic():
        with torch.no_grad():
            return agent.actor.sample_chain(obs, steps=5, eta=0.0,
                                            noise=torch.zeros(128, 8, 10)).chain[0, -1]

    before = deterministic()
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    for it in range(6):
        _, chain, _ = agent.explore(obs, g)
        adv = torch.randn(128, generator=g)
        agent.update(Batch(obs=obs, chains=chain, advantages=adv, returns=torch.zeros(128), values=torch.zeros(128)), it)
    return float((deterministic() - before).abs().mean())


def test_bc_term_holds_the_policy_near_the_base_when_the_advantages_are_noise():
    free, held = _drift_under_noise_advantages(0.0), _drift_under_noise_advantages(1.0)
    assert held < 0.5 * free, (free, held)


def test_rollout_inputs_from_a_device_backend_never_pass_through_numpy():
    """The batched backend's observations and rewards are tensors on its device (a GPU): buffer
    specs and the finetune loop's conversions take them as tensors. torch's 'meta' device stands
    in for CUDA here: numpy cannot read it either."""
    from policy.rl.buffer import obs_specs
    from sim.api import to_torch

    obs = {"state": torch.empty(4, 2, 10, device="meta"), "rgb/front": torch.empty(4, 2, 8, 8, 3, dtype=torch.uint8,
                                                                                   device="meta")}
    specs = obs_specs(obs, ["state", "rgb/front"])
    assert specs["state"].shape == (2, 10) and specs["state"].dtype == torch.float32
    assert specs["rgb/front"].shape == (2, 8, 8, 3) and specs["rgb/front"].dtype == torch.uint8
    moved = to_torch(torch.empty(4, device="meta"), "meta", torch.float32)
    assert moved.device.type == "meta" and moved.dtype == torch.float32
    assert torch.equal(to_torch(np.array([1, 0], dtype=bool), "cpu", torch.bool), torch.tensor([True, False]))
