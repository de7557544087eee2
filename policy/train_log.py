"""Training scalars to TensorBoard, mirrored to Weights & Biases when asked.

TensorBoard is always written (`<out_dir>/tb`): it needs no account or network. W&B is optional
(`wandb.enabled`, `pip install -e .[wandb]`); its run id is kept in `<out_dir>/wandb_run_id`, so
the resumable chunks of one training run stay one W&B run, and `wandb.mode=offline` logs to
`<out_dir>/wandb` for a later `wandb sync` on machines without network.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from data.typed_config import from_mapping

log = logging.getLogger(__name__)


@dataclass
class WandbConfig:
    """The `wandb` config group (TensorBoard is always written; W&B mirrors it when enabled)."""

    enabled: bool = False  # needs: pip install -e '.[wandb]'
    project: str = "pixel-dppo"
    entity: str | None = None
    mode: Literal["online", "offline"] = "online"  # offline: logs to <out_dir>/wandb; `wandb sync` later


class TrainLog:
    def __init__(self, out_dir: str | Path, wandb_cfg: WandbConfig | Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None):
        from torch.utils.tensorboard import SummaryWriter

        if wandb_cfg is None or isinstance(wandb_cfg, Mapping):
            wandb_cfg = from_mapping(WandbConfig, wandb_cfg, where="wandb")
        self.out = Path(out_dir)
        self.tb = SummaryWriter(str(self.out / "tb"))
        self.wandb_run = None
        if wandb_cfg.enabled:
            self.wandb_run = self._start_wandb(wandb_cfg, dict(config or {}))

    def _start_wandb(self, cfg: WandbConfig, config: dict[str, Any]):
        try:
            import wandb
        except ImportError as e:
            raise ImportError("wandb.enabled=true needs the wandb package: pip install -e '.[wandb]' "
                              "(or set wandb.enabled=false; TensorBoard logs are always written)") from e
        id_file = self.out / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(self.out), id=run_id,
                         resume="allow", config=config)
        log.info("W&B run %s (%s)", run_id, cfg.mode)
        return run

    def scalar(self, name: str, value: float, step: int) -> None:
        self.tb.add_scalar(name, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log({name: float(value)}, step=step)

    def image(self, name: str, path: str | Path, step: int) -> None:
        """An image file (e.g. the learning curve), to W&B only: TensorBoard has the scalars."""
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({name: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
