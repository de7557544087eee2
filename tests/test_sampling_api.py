"""The RL sampling API of the diffusion policy: per-sample DDIM steps, the denoising chain
(`sample_chain`) and its differentiable log-probabilities (`chain_log_prob`)."""
import numpy as np
import pytest
import torch

from policy.diffusion_policy import DiffusionPolicy
from tests.test_policy import batch, normalizer, small_cfg


def policy(seed=0):
    torch.manual_seed(seed)
    return DiffusionPolicy(small_cfg(cameras=()), normalizer()).eval()


def test_ddim_step_with_per_sample_timesteps_matches_scalar_steps():
    p = policy()
    x = torch.randn(3, 8, 10, generator=torch.Generator().manual_seed(0))
    out = torch.randn(3, 8, 10, generator=torch.Generator().manual_seed(1))
    t, t_prev = torch.tensor([99, 50, 0]), torch.tensor([74, 25, -1])
    mean, sigma = p.schedule.ddim_step(out, x, t, t_prev, eta=1.0)
    for i in range(3):
        m, s = p.schedule.ddim_step(out[i:i + 1], x[i:i + 1], int(t[i]), int(t_prev[i]), eta=1.0)
        torch.testing.assert_close(mean[i:i + 1], m, rtol=0, atol=0)
        torch.testing.assert_close(sigma[i:i + 1], s, rtol=0, atol=0)
    assert sigma[2].abs().max() == 0  # the step to the clean sample has no noise
    assert sigma[0].min() > 0


def test_chain_holds_the_policy_steps_and_decodes_to_act():
    p = policy()
    obs = batch(cams=())
    noise = torch.randn(3, 8, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        s = p.sample_chain(obs, steps=5, eta=0.0, ft_steps=3, noise=noise, deterministic=True)
    assert s.chain.shape == (3, 4, 8, 10) and s.chain.dtype == torch.float32
    assert s.actions.shape == (3, 8 - p.cfg.exec_start, 10)
    acted = p.act(obs, noise=noise, eta=0.0)  # act re-orthonormalises the rotation part only
    np.testing.assert_allclose(acted[..., [0, 1, 2, 9]], s.actions.numpy()[..., [0, 1, 2, 9]], atol=1e-6)
    with torch.no_grad():
        full = p.sample_chain(obs, steps=5, eta=0.0, noise=noise, deterministic=True)
    assert full.chain.shape == (3, 6, 8, 10)
    torch.testing.assert_close(full.chain[:, 0], noise)  # K' = K: the chain starts at x_T
    torch.testing.assert_close(full.chain[:, -3:], s.chain[:, -3:])
    assert s.chain[:, -1].abs().max() <= 1.0


def reference_log_prob(p, obs, chain, steps, eta, min_std):
    """Step by step with scalar timesteps: the per-element Gaussian, clamped, averaged over the
    executed actions."""
    cond = p.condition(obs)
    ts = p.schedule.ddim_timesteps(steps)
    k = chain.shape[1] - 1
    out = []
    for j, t in enumerate(ts[steps - k:]):
        i = steps - k + j
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x = chain[:, j]
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        mean, sigma = p.schedule.ddim_step(p.denoiser(x, tt, cond), x, t, t_prev, eta)
        lp = torch.distributions.Normal(mean, sigma.clamp(min=min_std)).log_prob(chain[:, j + 1]).clamp(-5, 2)
        a = p.cfg.exec_start
        out.append(lp[:, a:a + p.cfg.act_steps].mean(dim=(1, 2)))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("ft_steps", [1, 3, 5])
def test_chain_log_prob_matches_a_step_by_step_reference(ft_steps):
    p = policy()
    obs = batch(cams=())
    with torch.no_grad():
        s = p.sample_chain(obs, steps=5, eta=1.0, ft_steps=ft_steps, min_std=0.04, noise_clip=3.0,
                           generator=torch.Generator().manual_seed(4))
        ref = reference_log_prob(p, obs, s.chain, 5, 1.0, 0.1)
    lp = p.chain_log_prob(obs, s.chain, steps=5, eta=1.0, min_std=0.1)
    assert lp.shape == (3, ft_steps) and torch.isfinite(lp).all()
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-5)
    summed = p.chain_log_prob(obs, s.chain, steps=5, eta=1.0, min_std=0.1, reduce="sum")
    torch.testing.assert_close(summed, lp * p.cfg.act_steps * 10, rtol=1e-5, atol=1e-4)
    # differentiable: a gradient reaches the denoiser
    lp.sum().backward()
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in p.denoiser.parameters())


def test_log_prob_prefers_the_chain_that_was_sampled():
    """A chain drawn from the policy is likelier under it than the same chain with its steps
    displaced (a log-prob that ignored the means or the targets would not tell them apart)."""
    p = policy()
    obs = batch(b=8, cams=())
    with torch.no_grad():
        s = p.sample_chain(obs, steps=5, eta=1.0, min_std=0.04, generator=torch.Generator().manual_seed(5))
        own = p.chain_log_prob(obs, s.chain, eta=1.0, min_std=0.1)
        moved = s.chain.clone()
        moved[:, 1:] += 0.2 * torch.randn(moved[:, 1:].shape, generator=torch.Generator().manual_seed(6))
        other = p.chain_log_prob(obs, moved, eta=1.0, min_std=0.1)
    assert (own[:, -2:] > other[:, -2:]).all()  # the late steps have small std: displacement shows


def test_sampling_std_floor_and_noise_clip_apply_to_policy_steps():
    p = policy()
    obs = batch(cams=())
    x_t = torch.zeros(3, 8, 10)
    with torch.no_grad():
        det = p.sample_chain(obs, eta=0.0, noise=x_t, deterministic=True).chain
        floor = p.sample_chain(obs, eta=0.0, min_std=0.5, noise=x_t, generator=torch.Generator().manual_seed(0)).chain
        clipped = p.sample_chain(obs, eta=0.0, min_std=0.5, noise_clip=0.01, noise=x_t,
                                 generator=torch.Generator().manual_seed(0)).chain
    # eta 0 alone is deterministic; the std floor makes even eta 0 explore, the clip bounds the draw
    assert (floor[:, 1] - det[:, 1]).abs().max() > 0.1
    assert (clipped[:, 1] - det[:, 1]).abs().max() <= 0.5 * 0.01 + 1e-6
    with pytest.raises(ValueError, match="ft_steps"):
        p.sample_chain(obs, steps=5, ft_steps=6)
