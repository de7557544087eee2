"""Models and learning: ViT encoder, diffusion policy, checkpoints (DPPO next). Imports nothing
from sim/ or real/."""


def resolve_device(name: str):
    """`auto` -> cuda when available, else cpu; anything else as torch names it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load(path, use_ema: bool = True, device: str = "cpu"):
    """Load a ready policy from a checkpoint file (see policy.checkpoint)."""
    from policy.checkpoint import load_policy

    return load_policy(path, use_ema=use_ema, device=device)
