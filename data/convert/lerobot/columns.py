"""pyarrow columns <-> numpy arrays, the way LeRobot's parquet files hold them.

LeRobot (through HF datasets) stores vectors as fixed-size lists and images as structs of
encoded bytes; these helpers are the only place that knows those encodings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from data.episodes import DatasetError


def arrow() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), imported on first use: only LeRobot conversion needs them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("LeRobot conversion needs pyarrow: pip install -e '.[convert]'") from e
    return pa, pq


def arrow_column(pa: Any, values: np.ndarray) -> Any:
    """(N,) -> plain column; (N, D) -> fixed_size_list<D> (what LeRobot's datasets Sequence(length=D) reads)."""
    values = np.ascontiguousarray(values)
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), int(values.shape[1]))


def concat_column(pa: Any, parts: list[Any]) -> Any:
    """One column from per-episode pieces (a chunked array avoids copying them together)."""
    return pa.chunked_array(parts) if len(parts) > 1 else parts[0]


def png_column(pa: Any, images: np.ndarray) -> Any:
    """(N, H, W, 3) RGB -> LeRobot `image` cells (PNG bytes, no path): lossless frames inside the parquet."""
    import cv2

    blobs = []
    for img in images:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        blobs.append({"bytes": buf.tobytes(), "path": None})
    return pa.array(blobs, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


def column_to_numpy(col: Any) -> np.ndarray:
    """Arrow column (scalar, list or fixed-size list) -> numpy (N,) or (N, D)."""
    import pyarrow.compute as pc

    pa, _ = arrow()
    col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    if pa.types.is_fixed_size_list(col.type):
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(len(col), col.type.list_size)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False))
        if len(lengths) and not np.all(lengths == lengths[0]):
            raise DatasetError("a list column has rows of different lengths")
        width = int(lengths[0]) if len(lengths) else 0
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(len(col), width)
    return np.asarray(col.to_numpy(zero_copy_only=False))


def decode_image_column(col: Any, root: Path) -> np.ndarray:
    """LeRobot `image` feature (struct of PNG/JPEG bytes or a path) -> (N, H, W, 3) uint8."""
    import cv2

    out = []
    for item in col.to_pylist():
        blob = item.get("bytes") if isinstance(item, dict) else item
        if blob is None and isinstance(item, dict) and item.get("path"):
            blob = (root / item["path"]).read_bytes()
        if blob is None:
            raise DatasetError("an image cell has neither bytes nor path")
        img = cv2.imdecode(np.frombuffer(blob, dtype=np.uint8), cv2.IMREAD_COLOR)
        out.append(img[..., ::-1])
    return np.ascontiguousarray(np.stack(out))
