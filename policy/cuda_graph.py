"""DDIM sampling replayed as one CUDA graph, for low-latency inference on a GPU.

Why: at batch 1 one action chunk is a few hundred small kernels (a ViT per camera, then the
denoiser once per DDIM step), so on a GPU the Python and launch overhead, not the arithmetic,
sets the latency. Capturing the whole `sample` call once and replaying it costs one launch.
The graph fixes the batch size, the cameras and the image size; inputs are copied into the
captured buffers on each call.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from policy.diffusion_policy import DiffusionPolicy


class GraphedSampler:
    """`sampler(obs) -> normalised chunk`, the same as `policy.sample(obs, steps, eta)` on CUDA."""

    def __init__(self, policy: DiffusionPolicy, example_obs: Mapping[str, torch.Tensor], steps: int | None = None,
                 eta: float = 0.0, warmup: int = 3):
        device = next(policy.parameters()).device
        if device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"CUDA graphs need the policy on a CUDA device (it is on {device})")
        if policy.training:
            raise RuntimeError("capture the policy in eval mode (call policy.eval()): training mode augments images")
        self.policy, self.steps, self.eta = policy, steps, eta
        self.obs = {k: v.detach().to(device).clone() for k, v in example_obs.items()}
        batch = next(iter(self.obs.values())).shape[0]
        self.noise = torch.randn(batch, policy.cfg.horizon, policy.cfg.action_dim, device=device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():  # warm-up: lazy inits and autotuning stay out of the graph
            for _ in range(warmup):
                policy.sample(self.obs, steps=steps, eta=eta, noise=self.noise)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.out = policy.sample(self.obs, steps=steps, eta=eta, noise=self.noise)

    def __call__(self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if set(obs) != set(self.obs):
            raise KeyError(f"the graph was captured for observation keys {sorted(self.obs)}, got {sorted(obs)}")
        for k, v in obs.items():
            if tuple(v.shape) != tuple(self.obs[k].shape):
                raise ValueError(f"'{k}' has shape {tuple(v.shape)}; the graph was captured for "
                                 f"{tuple(self.obs[k].shape)} (capture another sampler for other shapes)")
            self.obs[k].copy_(v, non_blocking=True)
        if noise is not None:
            self.noise.copy_(noise, non_blocking=True)
        else:
            self.noise.normal_(generator=generator)
        self.graph.replay()
        return self.out.clone()
