"""Policy inference latency (one action chunk, batch 1) and training throughput.

    python tools/bench/policy_latency.py                 # CPU here; on a GPU machine add --device cuda

Default policy: ViT (per camera) + MLP denoiser, two 96x96 cameras, horizon 8; DDIM-5 and
DDPM-100 latencies, plus training samples/s at batch 64 (CPU) / 256 (GPU). Each timed call
waits for the GPU to finish (latency, not pipelined throughput). On CUDA the DDIM-5 chunk is
also timed replayed as one CUDA graph (policy/cuda_graph.py).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from data.normalizer import Normalizer
from policy.cuda_graph import GraphedSampler
from policy.diffusion_policy import DiffusionPolicy, PolicyConfig
from policy.obs_encoder import ObsEncoderConfig

ROOT = Path(__file__).resolve().parents[2]


def make_policy(denoiser: str, device: str) -> DiffusionPolicy:
    rng = np.random.default_rng(0)
    norm = Normalizer.from_arrays({"state": rng.normal(size=(256, 10)), "action": rng.normal(size=(256, 10))},
                                  {"state": "minmax", "action": "minmax"})
    horizon = 16 if denoiser == "unet" else 8
    cfg = PolicyConfig(horizon=horizon, denoiser=denoiser, obs=ObsEncoderConfig(cameras=["front", "wrist"]))
    return DiffusionPolicy(cfg, norm).to(device)


def obs_batch(b: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    obs = {"state": torch.randn(b, 1, 10, generator=g)}
    for cam in ("front", "wrist"):
        obs[f"rgb/{cam}"] = torch.randint(0, 256, (b, 1, 96, 96, 3), generator=g, dtype=torch.uint8)
    return {k: v.to(device) for k, v in obs.items()}


def timed(fn, reps: int, device: str) -> float:
    """Mean milliseconds per call; on CUDA each call is waited for, as a controller would."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
        sync()
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "policy.json")
    args = ap.parse_args()
    dev = args.device
    rows = []
    cuda = dev.startswith("cuda")
    print(f"{'denoiser':8s} {'params M':>8s} {'DDIM-5 ms':>10s} {'graphed ms':>10s} {'DDPM-100 ms':>12s} "
          f"{'train samples/s':>16s}")
    for denoiser in ("mlp", "unet"):
        p = make_policy(denoiser, dev).eval()
        obs1 = obs_batch(1, dev)
        with torch.inference_mode():
            ddim = timed(lambda: p.sample(obs1, steps=5, eta=0.0), args.reps, dev)
            ddpm = timed(lambda: p.sample(obs1, ddpm=True), max(3, args.reps // 10), dev)
        graphed = None
        if cuda:
            sampler = GraphedSampler(p, obs1, steps=5)
            graphed = timed(lambda: sampler(obs1), args.reps, dev)
        p.train()
        bs = 256 if cuda else 64
        obs_b = obs_batch(bs, dev)
        act = torch.randn(bs, p.cfg.horizon, 10, device=dev)
        opt = torch.optim.AdamW(p.parameters(), lr=1e-4)

        def train_step():
            loss = p.loss(obs_b, act)
            opt.zero_grad()
            loss.backward()
            opt.step()

        ms = timed(train_step, max(3, args.reps // 5), dev)
        row = {"denoiser": denoiser, "params_m": sum(x.numel() for x in p.parameters()) / 1e6, "ddim5_ms": ddim,
               "ddim5_graphed_ms": graphed, "ddpm100_ms": ddpm, "train_samples_per_s": bs / ms * 1e3, "batch": bs}
        rows.append(row)
        g = f"{graphed:10.2f}" if graphed is not None else f"{'-':>10s}"
        print(f"{denoiser:8s} {row['params_m']:8.2f} {ddim:10.2f} {g} {ddpm:12.1f} {row['train_samples_per_s']:16.0f}")
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device_name, "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
