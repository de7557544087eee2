"""Models and learning: ViT encoder, diffusion policy, checkpoints, DPPO (policy/rl), export. Imports nothing
from sim/ or real/."""


def resolve_device(name: str):
    """`auto` -> cuda when available, else cpu; anything else as torch names it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load(path, use_ema: bool = True, device: str = "cpu"):
    """Load a ready policy from a checkpoint file (see policy.checkpoint), or an exported artefact
    (.onnx / .ts / .pt2 with its sidecar, see policy.export: `use_ema` and `device` were fixed at
    export)."""
    from policy.export import is_artefact, load_exported

    if is_artefact(path):
        return load_exported(path)
    from policy.checkpoint import load_policy

    return load_policy(path, use_ema=use_ema, device=device)
