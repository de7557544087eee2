"""Locate furniture-bench's meshes in its installed wheel and prepare low-poly visuals.

The meshes are never copied into this repository: `pip install --no-deps furniture-bench`
ships them, and we find them through importlib. Rendering the original 12k-vertex
meshes costs ~10x more than decimated ones for 96x96 policy images, so visuals are
decimated once (fast-simplification) and cached on disk.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class MissingDependencyError(ImportError):
    """A backend or asset needs a package that is not installed."""


def furniture_bench_asset_dir() -> Path:
    spec = importlib.util.find_spec("furniture_bench")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            "package 'furniture-bench' is not installed; it provides the square_table meshes. "
            "Install it with: pip install --no-deps furniture-bench==0.1"
        )
    path = Path(spec.origin).parent / "assets" / "furniture"
    if not path.is_dir():
        raise MissingDependencyError(f"furniture-bench is installed but has no assets at {path}")
    return path


def mesh_path(name: str) -> Path:
    """`name` like 'square_table/square_table_top' -> path of its OBJ."""
    path = furniture_bench_asset_dir() / "mesh" / f"{name}.obj"
    if not path.is_file():
        raise FileNotFoundError(f"furniture-bench mesh not found: {path}")
    return path


def load_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V,3) and triangle faces (F,3) of every object in an OBJ file (polygons fanned)."""
    verts: list[list[float]] = []
    faces: list[list[int]] = []
    with open(path) as f:
        for line in f:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                idx = [int(tok.split("/")[0]) - 1 for tok in line.split()[1:]]
                for k in range(1, len(idx) - 1):
                    faces.append([idx[0], idx[k], idx[k + 1]])
    return np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int32)


def cache_dir(kind: str = "meshes") -> Path:
    """A folder of derived assets (decimated meshes, compiled scenes) under $PIXEL_DPPO_CACHE."""
    root = os.environ.get("PIXEL_DPPO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "pixel_dppo"))
    path = Path(root) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def visual_mesh(name: str, max_faces: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The mesh `name`, decimated to about `max_faces` triangles (None: original), cached."""
    src = mesh_path(name)
    verts, faces = load_obj(src)
    if max_faces is None or len(faces) <= max_faces:
        return verts, faces
    key = hashlib.sha1(f"{src}:{src.stat().st_size}:{max_faces}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"{Path(name).name}_{key}.npz"
    if cached.is_file():
        with np.load(cached) as z:
            return z["verts"], z["faces"]
    import fast_simplification

    ratio = 1.0 - max_faces / len(faces)
    v2, f2 = fast_simplification.simplify(verts.astype(np.float32), faces, target_reduction=ratio)
    v2, f2 = np.asarray(v2, dtype=np.float64), np.asarray(f2, dtype=np.int32)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, verts=v2, faces=f2)
    os.replace(tmp, cached)
    log.info("decimated %s: %d -> %d faces (cached %s)", name, len(faces), len(f2), cached)
    return v2, f2
