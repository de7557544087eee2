"""Export parity and batch-1 latency of the shipped checkpoints, every format beside eager torch.

    python tools/bench/export.py                 # -> docs/bench/export.json + a table
    python tools/bench/export.py --formats onnx torchscript --threads 1

Latency is one action chunk at batch 1 (what the real-time controller asks for every 0.4 s at
10 Hz with 4 executed actions): the whole path from raw observations to absolute EE targets,
median and 90th percentile over `--runs` calls, on `--threads` CPU threads.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from policy.export import SUFFIX, export_policy

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = {"state": ROOT / "checkpoints" / "one_leg_state_bc.pt", "pixel": ROOT / "checkpoints" / "one_leg_pixel_bc.pt"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--formats", nargs="+", default=["onnx", "torchscript", "aoti"])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "export.json"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for obs, ckpt in CHECKPOINTS.items():
            for fmt in args.formats:
                meta = export_policy(ckpt, fmt, Path(tmp) / f"{obs}{SUFFIX[fmt]}", latency_runs=args.runs, threads=args.threads)
                lat = meta.latency_ms
                rows.append({"obs": obs, "format": fmt, "runtime": lat["runtime"],
                             "max_abs_action_diff": meta.parity["max_abs_action_diff"],
                             "eager_median_ms": lat["eager"]["median"], "eager_p90_ms": lat["eager"]["p90"],
                             "median_ms": lat[fmt]["median"], "p90_ms": lat[fmt]["p90"], "export_s": lat["export_s"]})
    out = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}), {torch.get_num_threads()} "
                      f"torch threads available, {args.threads} used", "torch": torch.__version__, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print("| obs | format | runtime | max abs action diff | eager median / p90 (ms) | artefact median / p90 (ms) | export (s) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['obs']} | {r['format']} | {r['runtime']} | {r['max_abs_action_diff']:.1e} | "
              f"{r['eager_median_ms']:.2f} / {r['eager_p90_ms']:.2f} | {r['median_ms']:.2f} / {r['p90_ms']:.2f} | "
              f"{r['export_s']:.1f} |")
    print(f"-> {args.out}")
    return out


if __name__ == "__main__":
    main()
