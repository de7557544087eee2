"""How the denoiser sees an action chunk: absolute EE targets, or targets relative to the EE now.

The policy's *output* is always the absolute EE pose target of the data contract. Inside, a
chunk can be expressed relative to the end-effector pose of the latest observation (UMI's
"relative trajectory"): position as `target - ee` in the robot base frame, rotation as
`R_target @ R_ee^T` (6D), gripper width unchanged.

Why: minmax-normalised absolute positions span the whole workspace (~0.35 m), so 1 mm is
0.006 of the [-1, 1] range the diffusion model works in. A chunk relative to the current pose
spans only what the hand moves in `horizon` steps, and each chunk index gets its own statistics
(`RELATIVE_KEY` has horizon x 10 dims), so the same millimetre is 5-30x larger in normalised
units: insertion-grade precision stops depending on the denoiser's last few bits.
"""
from __future__ import annotations

import numpy as np
import torch

from data import rotation as np_rotation  # the numpy versions of the functions below

ABSOLUTE = "absolute"
RELATIVE = "relative"
REPRS = (ABSOLUTE, RELATIVE)
RELATIVE_KEY = "action_rel"  # normaliser key of flattened relative chunks (horizon * action_dim dims)


def rot6d_to_matrix(r6: torch.Tensor) -> torch.Tensor:
    """(..., 6) first two rows -> (..., 3, 3) by Gram-Schmidt (as data.rotation, in torch)."""
    b1 = torch.nn.functional.normalize(r6[..., :3], dim=-1)
    a2 = r6[..., 3:6]
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=-1)], dim=-2)


def matrix_to_rot6d(m: torch.Tensor) -> torch.Tensor:
    return m[..., :2, :].reshape(*m.shape[:-2], 6)


def to_relative(action: torch.Tensor, ee: torch.Tensor) -> torch.Tensor:
    """Absolute chunk (B, H, 10) -> relative to `ee` (B, >=9: position, 6D rotation, ...)."""
    pos = action[..., :3] - ee[:, None, :3]
    r_ee = rot6d_to_matrix(ee[:, 3:9])[:, None]
    rot = matrix_to_rot6d(rot6d_to_matrix(action[..., 3:9]) @ r_ee.transpose(-1, -2))
    return torch.cat([pos, rot, action[..., 9:]], dim=-1)


def to_absolute(rel: torch.Tensor, ee: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_relative`."""
    pos = rel[..., :3] + ee[:, None, :3]
    r_ee = rot6d_to_matrix(ee[:, 3:9])[:, None]
    rot = matrix_to_rot6d(rot6d_to_matrix(rel[..., 3:9]) @ r_ee)
    return torch.cat([pos, rot, rel[..., 9:]], dim=-1)


def relative_chunks(state: np.ndarray, action: np.ndarray, obs_frames: np.ndarray,
                    action_frames: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Flattened relative chunks (N, H * 10) of windows given by frame indices.

    `obs_frames` (N, To) and `action_frames` (N, H) index the rows of the dataset's `state`
    and `action` arrays; the reference pose is the latest observation of each window, as at
    run time. Used to fit the normaliser of `RELATIVE_KEY`.
    """
    out = []
    for i in range(0, len(obs_frames), batch):
        ee = torch.from_numpy(np.asarray(state[obs_frames[i:i + batch, -1]], dtype=np.float32))
        act = torch.from_numpy(np.asarray(action[action_frames[i:i + batch]], dtype=np.float32))
        out.append(to_relative(act, ee).flatten(1).numpy())
    return np.concatenate(out) if out else np.zeros((0, action_frames.shape[1] * 10), np.float32)


def encode_chunk(normalizer, action_repr: str, action: torch.Tensor, obs) -> torch.Tensor:
    """Raw absolute chunk (B, H, 10) -> the normalised chunk a policy models (relative to the
    latest observed EE pose `obs["state"][:, -1]` when `action_repr` is RELATIVE)."""
    if action_repr == RELATIVE:
        rel = to_relative(action, obs["state"][:, -1].float())
        return normalizer.normalize(RELATIVE_KEY, rel.flatten(1)).view_as(rel)
    return normalizer.normalize("action", action)


def decode_chunk(normalizer, action_repr: str, x: torch.Tensor, obs) -> torch.Tensor:
    """Inverse of `encode_chunk`: normalised chunk -> raw absolute EE targets."""
    if action_repr == RELATIVE:
        rel = normalizer.unnormalize(RELATIVE_KEY, x.flatten(1)).view_as(x)
        return to_absolute(rel, obs["state"][:, -1].float())
    return normalizer.unnormalize("action", x)


def orthonormal_actions(actions: torch.Tensor) -> np.ndarray:
    """Decoded actions (..., A) -> float32 numpy with every 6D rotation (A = 10: entries 3:9)
    re-orthonormalised, so each is a valid pose; FloatingPointError on NaN/Inf."""
    out = actions.detach().cpu().numpy().astype(np.float32)
    if out.shape[-1] == 10:
        out[..., 3:9] = np_rotation.matrix_to_rot6d(np_rotation.rot6d_to_matrix(out[..., 3:9])).astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("the policy produced NaN/Inf actions")
    return out
