"""One-file checkpoints: weights, EMA weights, normaliser, obs/action schema, config, version.

Everything is stored as tensors or plain python containers, so `torch.load(weights_only=True)`
(no arbitrary unpickling) reads it, and loading needs nothing but the file.

The `schema` entry is the typed observation/action contract of `data/schema.py` in its dict
form: `{"version": SCHEMA_VERSION, "obs": ObsSchema.to_dict(), "action": ActionSchema.to_dict(),
...}` plus descriptive keys (`task`, `dataset`). A loaded policy carries it as `obs_schema` /
`action_schema`. It must agree with the policy config (cameras, image size, the widths of the
low-dim keys the policy reads, action dim); a checkpoint whose schema does not is refused.
Checkpoints written before the typed schema (a loose `{"obs": {cameras, image_hw, state_dim}}`)
are converted on load.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from data.normalizer import Normalizer
from data.schema import SCHEMA_VERSION, ActionSchema, ObsSchema

FORMAT = "pixel-dppo-policy"
VERSION = 1
PART_DIM = 9  # numbers per part pose in `parts`: position 3 + rotation 6D (data.schema)


class CheckpointError(Exception):
    """Missing, corrupt, or incompatible checkpoint."""


# --- the observation / action schema of a policy ------------------------------------------------
def lowdim_widths(obs: ObsSchema) -> dict[str, int]:
    """Width of each low-dim observation key the schema provides."""
    widths = {"state": obs.state_dim}
    if obs.include_parts:
        widths["parts"] = PART_DIM * obs.n_parts
    return widths


def obs_schema_for(cameras: Sequence[str], image_hw: Sequence[int], lowdim_keys: Sequence[str], state_dim: int,
                   n_parts: int | None = None) -> ObsSchema:
    """The ObsSchema of a policy that reads `cameras` and the low-dim keys `lowdim_keys`, whose
    widths add up to `state_dim`: whether `state` includes the joints and how many part poses
    `parts` holds follow from the sum (10 or 17 for `state`, 9 per part; the split is unique).
    `n_parts` is recorded when the policy does not read `parts` (default: the schema's)."""
    keys = list(lowdim_keys)
    unknown = [k for k in keys if k not in ("state", "parts")]
    if unknown:
        raise ValueError(f"low-dim keys {unknown} are not part of the observation schema (data/schema.py: "
                         f"'state', 'parts')")
    has_state, has_parts = "state" in keys, "parts" in keys
    base = {"cameras": tuple(cameras), "image_hw": tuple(int(v) for v in image_hw), "include_parts": has_parts}
    if n_parts is not None and not has_parts:
        base["n_parts"] = int(n_parts)
    for joints in ((False, True) if has_state else (False,)):
        rest = state_dim - (ObsSchema(include_joints=joints).state_dim if has_state else 0)
        if has_parts and rest > 0 and rest % PART_DIM == 0:
            return ObsSchema(include_joints=joints, n_parts=rest // PART_DIM, **base)
        if not has_parts and rest == 0:
            return ObsSchema(include_joints=joints, **base)
    raise ValueError(f"low-dim keys {keys} of total width {state_dim} do not fit the observation schema "
                     f"(state: 10, or 17 with joints; parts: {PART_DIM} per part)")


def policy_obs_schema(cfg, n_parts: int | None = None) -> ObsSchema:
    """The ObsSchema a PolicyConfig implies (see `obs_schema_for`)."""
    o = cfg.obs
    return obs_schema_for(o.cameras, o.image_hw, o.lowdim_keys, int(o.state_dim), n_parts=n_parts)


def schema_mismatch(cfg, obs: ObsSchema, action: ActionSchema) -> str | None:
    """Why `obs`/`action` do not describe what a policy with config `cfg` reads and writes, or None."""
    o = cfg.obs
    if tuple(obs.cameras) != tuple(o.cameras):
        return f"schema cameras {list(obs.cameras)} != policy cameras {list(o.cameras)}"
    if o.cameras and tuple(obs.image_hw) != tuple(o.image_hw):
        return f"schema image_hw {list(obs.image_hw)} != policy image_hw {list(o.image_hw)}"
    widths = lowdim_widths(obs)
    missing = [k for k in o.lowdim_keys if k not in widths]
    if missing:
        return f"the policy reads {missing}, which the schema does not provide"
    total = sum(widths[k] for k in o.lowdim_keys)
    if total != int(o.state_dim):
        return (f"schema widths {({k: widths[k] for k in o.lowdim_keys})} sum to {total}, the policy's "
                f"obs.state_dim is {o.state_dim}")
    if int(action.dim) != int(cfg.action_dim):
        return f"schema action dim {action.dim} != policy action_dim {cfg.action_dim}"
    return None


def _plain(x: Any) -> Any:
    """Tuples -> lists (the stored form is plain JSON-like data)."""
    return json.loads(json.dumps(x))


def schema_to_dict(obs: ObsSchema, action: ActionSchema, **extra: Any) -> dict[str, Any]:
    return {**_plain(extra), "version": SCHEMA_VERSION, "obs": _plain(obs.to_dict()),
            "action": _plain(action.to_dict())}


def schema_from_dict(d: Mapping[str, Any]) -> tuple[ObsSchema, ActionSchema]:
    """The typed schemas of a (current-form) checkpoint schema dict."""
    if d.get("version") != SCHEMA_VERSION:
        raise ValueError(f"checkpoint schema version {d.get('version')!r}; this code reads {SCHEMA_VERSION}")
    return ObsSchema.from_dict(d["obs"]), ActionSchema.from_dict(d["action"])


def upgrade_schema(schema: Mapping[str, Any] | None, config: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's schema in the current form; a loose pre-typed dict (no `version`; `obs`
    with cameras, image_hw, state_dim) is converted with the help of the policy config dict."""
    schema = dict(schema or {})
    if "version" in schema:
        return schema
    cfg_obs = dict(config.get("obs") or {})
    old_obs = dict(schema.pop("obs", None) or {})
    obs = obs_schema_for(old_obs.get("cameras", cfg_obs.get("cameras", ())),
                         old_obs.get("image_hw", cfg_obs.get("image_hw", (96, 96))),
                         cfg_obs.get("lowdim_keys", ["state"]), int(old_obs.get("state_dim", cfg_obs.get("state_dim", 10))))
    old_action = schema.pop("action", None)
    action = ActionSchema.from_dict(old_action) if old_action else ActionSchema(dim=int(config.get("action_dim", 10)))
    return schema_to_dict(obs, action, **schema)


def checkpoint_schema(policy, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The schema entry for saving `policy`: `schema` may give `obs` / `action` (typed, or their
    dict form) and descriptive keys; what it leaves out comes from the policy's `obs_schema` /
    `action_schema` attributes, else from its config."""
    extra = dict(schema or {})
    extra.pop("version", None)
    try:
        obs = extra.pop("obs", None) or getattr(policy, "obs_schema", None) or policy_obs_schema(policy.cfg)
        action = extra.pop("action", None) or getattr(policy, "action_schema", None) or \
            ActionSchema(dim=int(policy.cfg.action_dim))
        obs = obs if isinstance(obs, ObsSchema) else ObsSchema.from_dict(obs)
        action = action if isinstance(action, ActionSchema) else ActionSchema.from_dict(action)
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"no obs/action schema for this policy: {e}") from e
    reason = schema_mismatch(policy.cfg, obs, action)
    if reason:
        raise CheckpointError(f"the schema does not match the policy config: {reason}")
    return schema_to_dict(obs, action, **extra)


# --- files ----------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, policy, *, ema=None, train_state: Mapping[str, Any] | None = None,
                    schema: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None) -> Path:
    """`schema`: see `checkpoint_schema` (a schema that does not fit the policy is a CheckpointError)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": policy.cfg.to_dict(),
        "normalizer": policy.normalizer.state_dict(),
        "schema": checkpoint_schema(policy, schema),
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
    try:
        payload["schema"] = upgrade_schema(payload.get("schema"), payload["config"])
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: its obs/action schema cannot be read: {e}") from e
    return payload


def policy_classes(config: Mapping[str, Any]) -> tuple[type, type]:
    """(policy class, config class) a checkpoint's config names by `policy_class`; without
    the key (every diffusion checkpoint) the diffusion policy."""
    kind = config.get("policy_class", "diffusion")
    if kind == "diffusion":
        from policy.diffusion_policy import DiffusionPolicy, PolicyConfig

        return DiffusionPolicy, PolicyConfig
    if kind == "gaussian":
        from policy.gaussian_policy import GaussianPolicy, GaussianPolicyConfig

        return GaussianPolicy, GaussianPolicyConfig
    raise CheckpointError(f"unknown policy_class {kind!r} (this code knows 'diffusion', 'gaussian')")


def load_policy(path: str | os.PathLike, use_ema: bool = True, device: str | torch.device = "cpu"):
    """A ready-to-act policy (eval mode) from a checkpoint file: a DiffusionPolicy, or the
    class its config's `policy_class` names (`gaussian`: policy.gaussian_policy)."""
    payload = load_checkpoint(path, map_location=device)
    policy_cls, config_cls = policy_classes(payload["config"])
    try:
        cfg = config_cls.from_dict(payload["config"])
        policy = policy_cls(cfg, Normalizer.from_state_dict(payload["normalizer"]))
        policy.load_state_dict(checkpoint_weights(payload, use_ema))
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not match this code's policy: {e}") from e
    try:
        obs, action = schema_from_dict(payload["schema"])
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: its obs/action schema cannot be read: {e}") from e
    reason = schema_mismatch(cfg, obs, action)
    if reason:
        raise CheckpointError(f"checkpoint {path}: its schema does not match its policy config: {reason}")
    policy.obs_schema, policy.action_schema = obs, action
    policy.schema = payload["schema"]  # the dict form, with the descriptive keys (task, dataset)
    return policy.to(device).eval()


def export_weights(src: str | os.PathLike, dst: str | os.PathLike, note: str = "", use_ema: bool = True) -> Path:
    """A deployable copy of a training checkpoint: the (EMA) weights as the model, no optimizer
    or training state (a third of the size), the config, normaliser and schema unchanged, and a
    `note` saying what it is. `load_policy` reads it like any checkpoint."""
    payload = load_checkpoint(src)
    meta = {k: v for k, v in dict(payload.get("meta") or {}).items() if k == "config"}
    return atomic_save({**payload, "model": checkpoint_weights(payload, use_ema), "ema": None, "train": None,
                        "meta": {**meta, "note": note}}, dst)
