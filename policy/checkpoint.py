"""One-file checkpoints: weights, EMA weights, normaliser, obs/action schema, config, version.

Everything is stored as tensors or plain python containers, so `torch.load(weights_only=True)`
(no arbitrary unpickling) reads it, and loading needs nothing but the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from data.normalizer import Normalizer

FORMAT = "pixel-dppo-policy"
VERSION = 1


class CheckpointError(Exception):
    """Missing, corrupt, or incompatible checkpoint."""


def save_checkpoint(path: str | os.PathLike, policy, *, ema=None, train_state: Mapping[str, Any] | None = None,
                    schema: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None) -> Path:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": policy.cfg.to_dict(),
        "normalizer": policy.normalizer.state_dict(),
        "schema": dict(schema or {}),
        "model": policy.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "train": dict(train_state) if train_state is not None else None,
        "meta": dict(meta or {}),
    }
    return atomic_save(payload, path)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through a temporary file, so an interrupted save never leaves a truncated file
    behind (the pid in its name keeps DDP ranks that save at once apart)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def checkpoint_weights(payload: Mapping[str, Any], use_ema: bool = True) -> dict[str, Any]:
    """The policy weights of a loaded checkpoint: its EMA weights when asked for and present."""
    return payload["ema"]["model"] if use_ema and payload.get("ema") else payload["model"]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip/pickle errors have many types
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch checkpoint: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}; this code reads {VERSION}")
    for key in ("config", "normalizer", "model"):
        if key not in payload:
            raise CheckpointError(f"{path} lacks '{key}'")
    return payload


def load_policy(path: str | os.PathLike, use_ema: bool = True, device: str | torch.device = "cpu"):
    """A ready-to-act DiffusionPolicy (eval mode) from a checkpoint file."""
    from policy.diffusion_policy import DiffusionPolicy, PolicyConfig

    payload = load_checkpoint(path, map_location=device)
    try:
        cfg = PolicyConfig.from_dict(payload["config"])
        policy = DiffusionPolicy(cfg, Normalizer.from_state_dict(payload["normalizer"]))
        policy.load_state_dict(checkpoint_weights(payload, use_ema))
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not match this code's policy: {e}") from e
    policy.schema = payload.get("schema", {})
    return policy.to(device).eval()


def export_weights(src: str | os.PathLike, dst: str | os.PathLike, note: str = "", use_ema: bool = True) -> Path:
    """A deployable copy of a training checkpoint: the (EMA) weights as the model, no optimizer
    or training state (a third of the size), the config, normaliser and schema unchanged, and a
    `note` saying what it is. `load_policy` reads it like any checkpoint."""
    payload = load_checkpoint(src)
    meta = {k: v for k, v in dict(payload.get("meta") or {}).items() if k == "config"}
    return atomic_save({**payload, "model": checkpoint_weights(payload, use_ema), "ema": None, "train": None,
                        "meta": {**meta, "note": note}}, dst)
