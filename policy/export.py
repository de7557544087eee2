"""Export a policy's whole inference path as one artefact, and run such artefacts as policies.

    python -m policy.export --ckpt checkpoints/one_leg_state_bc.pt --format onnx
    python -m policy.export --ckpt checkpoints/one_leg_pixel_bc.pt --format torchscript --out pixel.ts

Why one artefact: what runs on the robot must be exactly what was evaluated. The graph holds
everything between raw observations and the EE targets sent to the arm - the normaliser, the
ViT encoders, the fixed-step DDIM chain with eta 0 (the fine-tuned checkpoints' frozen early
steps included), the relative-to-absolute decoding and the rotation re-orthonormalisation -
so no Python of this repository has to agree with the training code at deploy time. Its
inputs are the raw observations (uint8 images, float32 low-dim state, each (B, To, ...)) and
the starting noise x_T (B, H, A): the caller owns the randomness, so an artefact fed the same
noise reproduces the eager policy.

Formats: `onnx` (torch.export, then onnxruntime on CPU, or CUDA where installed), `torchscript`
(torch.jit.trace), `aoti` (AOTInductor: compiled C++/CUDA, a .pt2 package; needs a C++
compiler). Each comes with a JSON sidecar (`<artefact>.json`): the observation keys and shapes,
the checkpoint's schema and hash, and the parity and latency measured at export. On a GPU the
CUDA-graph sampler (policy/cuda_graph.py) is the low-latency path for checkpoints.

`ExportedPolicy` runs an artefact with the interface sim/ and real/ drive a policy by
(`obs_keys`, `obs_history`, `act_steps`, `act`), so `tools/eval_policy.py checkpoint=x.onnx`
and `real/deploy.py --ckpt x.onnx` take artefacts and checkpoints alike (`policy.load`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from policy.action_repr import matrix_to_rot6d, rot6d_to_matrix
from policy.diffusion_policy import DiffusionPolicy, standard_normal

log = logging.getLogger("policy.export")

FORMATS = ("onnx", "torchscript", "aoti")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "aoti": ".pt2"}
NOISE = "noise"


class ExportError(RuntimeError):
    """An export failed, or an artefact cannot be run (missing runtime, wrong inputs)."""


@dataclass
class ExportMeta:
    """The sidecar: what an artefact needs to be fed and what was measured when it was made."""

    format: str
    artefact: str
    source: str
    source_sha256: str
    obs_keys: list[str]
    input_shapes: dict[str, list[int]]  # per sample (no batch dim), noise included
    input_dtypes: dict[str, str]
    ddim_steps: int
    obs_history: int
    act_steps: int
    horizon: int
    action_dim: int
    exec_start: int
    image_hw: list[int]
    dynamic_batch: bool
    device: str
    use_ema: bool
    schema: dict[str, Any] = field(default_factory=dict)
    torch_version: str = torch.__version__
    parity: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "ExportMeta":
        if not path.exists():
            raise ExportError(f"{path} is missing: an exported policy needs the sidecar written beside it "
                              f"by `python -m policy.export` (observation keys, shapes, schema)")
        try:
            return cls(**json.loads(path.read_text()))
        except (TypeError, ValueError) as e:
            raise ExportError(f"{path} is not an export sidecar of this code: {e}") from e


def sidecar_path(artefact: str | Path) -> Path:
    return Path(str(artefact) + ".json")


def input_names(obs_keys: Sequence[str]) -> list[str]:
    """The artefact's input names: the observation keys ('/' is not allowed in ONNX names), then
    the noise."""
    return [k.replace("/", "_") for k in obs_keys] + [NOISE]


def is_artefact(path: str | Path) -> bool:
    """An exported policy (by its suffix), as opposed to a training checkpoint."""
    return Path(path).suffix in SUFFIX.values()


class InferenceGraph(nn.Module):
    """(obs tensors in `obs_keys` order..., noise) -> (B, H - To + 1, A) absolute EE targets with
    orthonormal rotations: `DiffusionPolicy.act` as one traceable module."""

    def __init__(self, policy: DiffusionPolicy, steps: int | None = None):
        super().__init__()
        self.policy = policy.eval()
        self.steps = int(steps or policy.cfg.diffusion.ddim_steps)
        self.obs_keys = tuple(policy.obs_keys)
        policy.denoising_timesteps(self.steps)  # cached as ints: capture cannot read tensor values

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        obs = dict(zip(self.obs_keys, inputs[:-1]))
        actions = self.policy.sample_chain(obs, steps=self.steps, eta=0.0, ft_steps=1, noise=inputs[-1],
                                           deterministic=True).actions
        if actions.shape[-1] != 10:
            return actions
        rot = matrix_to_rot6d(rot6d_to_matrix(actions[..., 3:9]))
        return torch.cat([actions[..., :3], rot, actions[..., 9:]], dim=-1)


def example_inputs(policy: DiffusionPolicy, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Plausible raw inputs: low-dim values uniform within the normaliser's fitted range (beyond it
    the policy extrapolates, which says nothing about the export), random uint8 images, N(0, 1)
    noise."""
    g = torch.Generator().manual_seed(seed)
    device = next(policy.parameters()).device
    to = policy.obs_history
    out = []
    for key in policy.lowdim_keys:
        lo, hi = policy.normalizer.unit_range(key)
        lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
        u = torch.rand(batch, to, len(lo), generator=g)
        out.append((lo + u * (hi - lo)).to(device))
    h, w = policy.image_hw
    for _ in policy.cameras:
        out.append(torch.randint(0, 256, (batch, to, h, w, 3), generator=g, dtype=torch.uint8).to(device))
    out.append(torch.randn(batch, policy.horizon, policy.action_dim, generator=g).to(device))
    return tuple(out)


# --- runners: one callable (numpy inputs -> numpy actions) per format --------------------------
class _OnnxRunner:
    def __init__(self, path: Path, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ExportError("running an ONNX policy needs onnxruntime: pip install onnxruntime==1.32.0 "
                              "(or onnxruntime-gpu on a CUDA machine)") from e
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # idle intra-op threads otherwise spin for work, taking the CPU from the controller's
        # 100 Hz stream thread (its jitter doubled beside a spinning session on 2 cores)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.names = [i.name for i in self.session.get_inputs()]
        self.provider = self.session.get_providers()[0]

    def __call__(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self.session.run(None, dict(zip(self.names, inputs)))[0]


class _TorchRunner:
    def __init__(self, module, device: str):
        self.module, self.device = module, torch.device(device)
        self.provider = f"torch ({device})"

    def __call__(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(x)).to(self.device) for x in inputs))
        return out.detach().cpu().numpy()


def _runner(fmt: str, path: Path, device: str, threads: int = 0):
    if fmt == "onnx":
        return _OnnxRunner(path, threads)
    if fmt == "torchscript":
        return _TorchRunner(torch.jit.load(str(path), map_location=device), device)
    if fmt == "aoti":
        return _TorchRunner(torch._inductor.aoti_load_package(str(path)), device)
    raise ExportError(f"unknown export format '{fmt}' ({' | '.join(FORMATS)})")


# --- export ------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _latency(fn, runs: int) -> dict[str, float]:
    fn()  # warm-up (lazy initialisation, allocator)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {"median": statistics.median(times), "p90": times[int(0.9 * (len(times) - 1))], "max": times[-1],
            "runs": runs}


def _capture(graph: InferenceGraph, fmt: str, out: Path, example: tuple[torch.Tensor, ...], names: list[str],
             opset: int | None) -> None:
    """Write the artefact, its batch size free in every format (the parity check runs two sizes)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {"inputs": tuple({0: batch} for _ in example)}  # forward(*inputs)
    if fmt == "onnx":
        program = torch.export.export(graph, example, dynamic_shapes=dynamic)
        torch.onnx.export(program, example, str(out), input_names=names, output_names=["actions"],
                          opset_version=opset, external_data=False)
    if fmt == "torchscript":
        import warnings

        with warnings.catch_warnings():  # shape-dependent Python branches: the parity check covers them
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(graph, example, check_trace=False)
        traced.save(str(out))
    if fmt == "aoti":
        program = torch.export.export(graph, example, dynamic_shapes=dynamic)
        torch._inductor.aoti_compile_and_package(program, package_path=str(out))


def export_policy(ckpt: str | Path, fmt: str = "onnx", out: str | Path | None = None, steps: int | None = None,
                  use_ema: bool = True, device: str = "cpu", example_batch: int = 2, opset: int | None = None,
                  tol: float = 1e-4, parity_batches: Sequence[int] = (1, 3), latency_runs: int = 50,
                  threads: int = 1) -> ExportMeta:
    """Export checkpoint `ckpt`, check the artefact against the eager policy (max abs action
    difference over `parity_batches`, ExportError above `tol`; the failed artefact is kept for
    inspection and named in the error), time both at batch 1, write the sidecar; returns it.

    `example_batch` >= 2: a batch of 1 would let capture fix the batch size."""
    from policy.checkpoint import checkpoint_schema, load_policy

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}' ({' | '.join(FORMATS)})")
    ckpt = Path(ckpt)
    policy = load_policy(ckpt, use_ema=use_ema, device=device)
    if not isinstance(policy, DiffusionPolicy):
        raise ExportError(f"{ckpt} holds a {type(policy).__name__}; export covers diffusion policies")
    out = Path(out) if out is not None else ckpt.with_suffix(SUFFIX[fmt])
    if out.suffix != SUFFIX[fmt]:  # policy.load tells artefacts from checkpoints by the suffix
        raise ExportError(f"a {fmt} artefact is named *{SUFFIX[fmt]}, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        graph = InferenceGraph(policy, steps)
        names = input_names(graph.obs_keys)
        example = example_inputs(policy, max(2, int(example_batch)))
        with torch.no_grad():
            graph(*example)  # eager first: caches (normaliser constants) hold real tensors, not traced ones
        t0 = time.perf_counter()
        _capture(graph, fmt, out, example, names, opset)
        export_s = time.perf_counter() - t0
        policy.normalizer.clear_cache()  # nothing the capture touched stays in the eager policy
        runner = _runner(fmt, out, device, threads)

        worst, per_batch = 0.0, {}
        for i, b in enumerate(parity_batches):
            inputs = example_inputs(policy, b, seed=100 + i)
            with torch.no_grad():
                ref = graph(*inputs).cpu().numpy()
                eager = policy.act(dict(zip(graph.obs_keys, inputs[:-1])), steps=graph.steps, eta=0.0,
                                   noise=inputs[-1])
            got = runner([x.cpu().numpy() for x in inputs])
            if got.shape != ref.shape:
                raise ExportError(f"{out}: actions of shape {got.shape} for batch {b}, the eager policy gives {ref.shape}")
            per_batch[str(b)] = float(np.abs(got - ref).max())
            worst = max(worst, per_batch[str(b)], float(np.abs(ref - eager).max()))
        one = example_inputs(policy, 1, seed=7)
        one_np = [x.cpu().numpy() for x in one]
        with torch.no_grad():
            latency = {"eager": _latency(lambda: graph(*one), latency_runs),
                       fmt: _latency(lambda: runner(one_np), latency_runs),
                       "threads": torch.get_num_threads(), "runtime": runner.provider, "export_s": export_s}
    finally:
        torch.set_num_threads(previous_threads)

    meta = ExportMeta(
        format=fmt, artefact=out.name, source=str(ckpt), source_sha256=_sha256(ckpt), obs_keys=list(graph.obs_keys),
        input_shapes={n: list(x.shape[1:]) for n, x in zip(names, example)},
        input_dtypes={n: str(x.dtype).removeprefix("torch.") for n, x in zip(names, example)},
        ddim_steps=graph.steps, obs_history=policy.obs_history, act_steps=policy.act_steps, horizon=policy.horizon,
        action_dim=policy.action_dim, exec_start=int(policy.cfg.exec_start), image_hw=list(policy.image_hw),
        dynamic_batch=True, device=device, use_ema=use_ema, schema=checkpoint_schema(policy),
        parity={"max_abs_action_diff": worst, "per_batch": per_batch, "tol": tol},
        latency_ms=latency)
    meta.save(sidecar_path(out))
    if not worst <= tol:
        raise ExportError(f"{out}: the exported policy's actions differ from the eager policy's by {worst:.3g} "
                          f"(tolerance {tol:g}); the artefact and {sidecar_path(out).name} are kept for inspection")
    log.info("exported %s -> %s (%s, max |diff| %.2g, %.2f ms vs eager %.2f ms at batch 1)", ckpt, out, fmt, worst,
             latency[fmt]["median"], latency["eager"]["median"])
    return meta


# --- running an artefact as a policy -------------------------------------------------------------
class ExportedPolicy:
    """An exported artefact driven like a checkpoint's policy (sim.api.ChunkPolicy): raw
    observations (B, To, ...) -> actions (B, H - To + 1, A), the noise drawn here exactly as the
    eager policy draws it, so one generator gives both the same episode."""

    def __init__(self, path: str | Path, threads: int = 0):
        self.path = Path(path)
        if not self.path.exists():
            raise ExportError(f"exported policy {self.path} does not exist")
        self.meta = ExportMeta.load(sidecar_path(self.path))
        self.runner = _runner(self.meta.format, self.path, self.meta.device, threads)
        self.schema = self.meta.schema
        self._names = input_names(self.meta.obs_keys)

    obs_keys = property(lambda self: tuple(self.meta.obs_keys))
    obs_history = property(lambda self: self.meta.obs_history)
    act_steps = property(lambda self: self.meta.act_steps)
    horizon = property(lambda self: self.meta.horizon)
    action_dim = property(lambda self: self.meta.action_dim)
    image_hw = property(lambda self: tuple(self.meta.image_hw))
    cameras = property(lambda self: tuple(k[4:] for k in self.meta.obs_keys if k.startswith("rgb/")))
    lowdim_keys = property(lambda self: tuple(k for k in self.meta.obs_keys if not k.startswith("rgb/")))

    def inputs(self, obs: Mapping[str, Any], noise: np.ndarray) -> list[np.ndarray]:
        """The artefact's inputs from raw observations, checked against the export's shapes."""
        out = []
        for key, name in zip(self.meta.obs_keys, self._names):
            if key not in obs:
                raise KeyError(f"exported policy {self.path.name} reads '{key}'; the observation has {sorted(obs)}")
            x = obs[key]
            x = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
            x = np.ascontiguousarray(x, dtype=self.meta.input_dtypes[name])
            if list(x.shape[1:]) != self.meta.input_shapes[name]:
                raise ValueError(f"'{key}' has per-sample shape {list(x.shape[1:])}; {self.path.name} was exported "
                                 f"for {self.meta.input_shapes[name]}")
            out.append(x)
        return out + [np.ascontiguousarray(noise, dtype=np.float32)]

    def act(self, obs: Mapping[str, Any], steps: int | None = None, eta: float | None = None, generator=None,
            noise: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        if steps is not None and int(steps) != self.meta.ddim_steps:
            raise ValueError(f"{self.path.name} was exported with {self.meta.ddim_steps} DDIM steps, not {steps}")
        if eta not in (None, 0, 0.0):
            raise ValueError(f"{self.path.name} samples deterministically (eta 0); eta {eta} needs the checkpoint")
        b = len(next(iter(obs[k] for k in self.meta.obs_keys)))
        if noise is None:
            noise = standard_normal((b, self.horizon, self.action_dim), "cpu", generator)
        noise = noise.detach().cpu().numpy() if torch.is_tensor(noise) else np.asarray(noise)
        out = np.asarray(self.runner(self.inputs(obs, noise)), dtype=np.float32)
        if not np.all(np.isfinite(out)):
            raise FloatingPointError(f"the exported policy {self.path.name} produced NaN/Inf actions")
        return out


def load_exported(path: str | Path, threads: int = 0) -> ExportedPolicy:
    return ExportedPolicy(path, threads)


# --- command line ---------------------------------------------------------------------------------
def _table(meta: ExportMeta) -> str:
    lat = meta.latency_ms
    rows = [("artefact", meta.artefact), ("format / runtime", f"{meta.format} / {lat.get('runtime')}"),
            ("inputs", ", ".join(f"{k} {meta.input_dtypes[k]}{meta.input_shapes[k]}" for k in meta.input_shapes)),
            ("DDIM steps (eta 0)", str(meta.ddim_steps)), ("dynamic batch", str(meta.dynamic_batch)),
            ("max |action diff|", f"{meta.parity['max_abs_action_diff']:.2e} (tol {meta.parity['tol']:g})"),
            (f"latency b=1 eager (ms)", f"{lat['eager']['median']:.2f} median, {lat['eager']['p90']:.2f} p90"),
            (f"latency b=1 {meta.format} (ms)", f"{lat[meta.format]['median']:.2f} median, "
                                               f"{lat[meta.format]['p90']:.2f} p90"),
            ("torch threads", str(lat["threads"])), ("export time (s)", f"{lat['export_s']:.1f}")]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> ExportMeta:
    ap = argparse.ArgumentParser(prog="python -m policy.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="policy checkpoint (.pt)")
    ap.add_argument("--format", default="onnx", choices=FORMATS)
    ap.add_argument("--out", default=None, help="artefact path (default: the checkpoint's, with the format's suffix)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the checkpoint's)")
    ap.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA ones")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs action difference from the eager policy")
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads for the timing (0: default)")
    ap.add_argument("--opset", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):  # per-pass INFO lines of the ONNX optimiser
        logging.getLogger(noisy).setLevel(logging.WARNING)
    meta = export_policy(args.ckpt, args.format, args.out, steps=args.steps, use_ema=not args.no_ema,
                         device=args.device, opset=args.opset, tol=args.tol, latency_runs=args.latency_runs,
                         threads=args.threads)
    print(_table(meta))
    return meta


if __name__ == "__main__":
    main()
