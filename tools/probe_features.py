"""Linear probe: how precisely do a policy's image features say where the parts are?

    python tools/probe_features.py checkpoint=runs/pretrain/one_leg_vit_mlp/last.pt dataset=datasets/<set>.zarr

Fits ridge regression from the policy's camera features of a frame (unaugmented, as at run time)
plus the EE state to the privileged part positions, on the training episodes, and reports the
error on the held-out episodes, next to the same probe from the EE state alone and the spread of
the positions. Why: one_leg needs the peg within ~2 mm of the hole, and an image encoder whose
features cannot place the parts that precisely caps the policy whatever its denoiser learns - the
question to ask of an encoder before freezing it (`train.freeze_image_encoders`) or blaming the
denoiser. A linear probe is a lower bound on what the features hold: the denoiser is not linear.
Writes probe.json to the Hydra run directory.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import policy as policy_pkg
from data.episodes import EpisodeDataset
from data.sampler import SplitConfig, WindowConfig, select_and_split
from data.torch_dataset import EpisodeWindowDataset, WindowDatasetConfig
from policy.frozen_features import frame_features

log = logging.getLogger("probe_features")


def frame_inputs(pi, path: str, episodes: np.ndarray, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(camera features, EE state, part poses) of every frame of `episodes`, in frame order."""
    cams = [f"rgb/{c}" for c in pi.cfg.obs.cameras]
    ds = EpisodeWindowDataset(path, episodes, WindowDatasetConfig(
        obs_keys=("state", "parts", *cams), window=WindowConfig(obs_history=1, horizon=1), image_layout="hwc",
        cache_images=True))
    feats = frame_features(pi.encoder, ds, views=1, device=device)
    frames = np.flatnonzero(ds.cache_rows >= 0)  # cache rows are the used frames in frame order
    x_img = np.concatenate([feats[k][:, 0].numpy() for k in cams], axis=1)
    return x_img, ds.lowdim["state"][frames], ds.lowdim["parts"][frames]


def ridge_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float) -> np.ndarray:
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    a, b = np.c_[a, np.ones(len(a))], np.c_[b, np.ones(len(b))]
    reg = alpha * len(a) * np.eye(a.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not penalised
    w = np.linalg.solve(a.T @ a + reg, a.T @ (y_train - y_train.mean(0)))
    return b @ w + y_train.mean(0)


def probe(cfg: DictConfig) -> dict:
    pi = policy_pkg.load(cfg.checkpoint, device=policy_pkg.resolve_device(str(cfg.device)))
    if not pi.cfg.obs.cameras:
        raise ValueError(f"{cfg.checkpoint} is a state-only policy: it has no image features to probe")
    ds = EpisodeDataset(cfg.dataset)
    if "parts" not in ds.keys:
        raise KeyError(f"{cfg.dataset} has no privileged 'parts' array to probe against (collect it in sim)")
    train_eps, val_eps = select_and_split(ds, SplitConfig(val_ratio=float(cfg.val_ratio), seed=int(cfg.seed), success_only=True))
    if not len(val_eps):
        raise ValueError("no held-out episodes: raise val_ratio")
    device = next(pi.parameters()).device
    img_tr, st_tr, parts_tr = frame_inputs(pi, cfg.dataset, train_eps, device)
    img_va, st_va, parts_va = frame_inputs(pi, cfg.dataset, val_eps, device)
    inputs = {"image features + EE state": (np.c_[img_tr, st_tr], np.c_[img_va, st_va]),
              "EE state only": (st_tr, st_va)}
    rows = []
    for i, name in enumerate(cfg.part_names):
        y_tr, y_va = parts_tr[:, 9 * i:9 * i + 3], parts_va[:, 9 * i:9 * i + 3]
        row = {"part": name, "spread_mm": float(1000 * np.linalg.norm(y_va - y_tr.mean(0), axis=1).mean())}
        for label, (x_tr, x_va) in inputs.items():
            err = np.linalg.norm(ridge_fit_predict(x_tr, y_tr, x_va, float(cfg.ridge)) - y_va, axis=1)
            row[label] = {"mean_mm": float(1000 * err.mean()), "median_mm": float(1000 * np.median(err)),
                          "p90_mm": float(1000 * np.quantile(err, 0.9))}
        rows.append(row)
    return {"checkpoint": str(cfg.checkpoint), "dataset": str(cfg.dataset), "train_frames": len(img_tr),
            "val_frames": len(img_va), "feature_dim": int(img_tr.shape[1]), "parts": rows}


@hydra.main(config_path="../configs", config_name="probe_features", version_base="1.3")
def main(cfg: DictConfig) -> None:
    res = probe(cfg)
    out = Path(HydraConfig.get().runtime.output_dir) / "probe.json"
    out.write_text(json.dumps(res, indent=2))
    print(f"\nheld-out part position error, {res['val_frames']} frames ({res['feature_dim']} feature dims):")
    print(f"{'part':6s} {'spread':>8s} {'features+state mean/median/p90':>32s} {'state only mean/median/p90':>28s}")
    for r in res["parts"]:
        f, s = r["image features + EE state"], r["EE state only"]
        print(f"{r['part']:6s} {r['spread_mm']:6.1f}mm {f['mean_mm']:9.1f} {f['median_mm']:7.1f} {f['p90_mm']:7.1f} mm "
              f"{s['mean_mm']:9.1f} {s['median_mm']:7.1f} {s['p90_mm']:7.1f} mm")
    print(f"written {out}")


if __name__ == "__main__":
    main()
