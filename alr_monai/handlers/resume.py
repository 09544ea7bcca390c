"""Resume an interrupted run from its newest checkpoint."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver

from alr_monai.utils import atomic_torch_save

CHECKPOINT_PATTERN = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``checkpoint_epoch=<N>.pt`` with the largest N in ``ckpt_dir``, or None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := CHECKPOINT_PATTERN.search(p.name))]
    return max(found)[1] if found else None


class EngineBestMetric:
    """Makes an evaluator's best metric and its epoch part of a checkpoint, so resuming does not forget them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict:
        state = self.engine.state
        return {"best_metric": float(state.best_metric), "best_metric_epoch": int(state.best_metric_epoch)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.engine.state.best_metric = float(state_dict["best_metric"])
        self.engine.state.best_metric_epoch = int(state_dict["best_metric_epoch"])


class ReseedTransformsHandler:
    """Reseeds a random transform chain at the start of every epoch with ``seed + epoch``.

    Augmentation then depends only on (seed, epoch), not on how many random numbers earlier epochs drew, so a
    run resumed from a checkpoint augments exactly as the uninterrupted run would have.
    """

    def __init__(self, transform, seed: int = 0) -> None:
        self.transform = transform
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.transform.set_random_state(seed=self.seed + engine.state.epoch)


class BestModelSaver:
    """Writes the network's state dict (bare, as MONAI bundles keep ``models/model.pt``) to ``path`` whenever an evaluator's key metric reaches a new best.

    It reads the evaluator's ``best_metric_epoch`` (MONAI updates it before handlers run), which a run
    checkpoint restores through :class:`EngineBestMetric`; so after a resume a worse validation never
    replaces the best model. Written atomically.
    """

    def __init__(self, network: torch.nn.Module, path: str | Path) -> None:
        self.network = network
        self.path = Path(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() == 0 and engine.state.best_metric_epoch == engine.state.epoch:
            atomic_torch_save(self.path, self.network.state_dict())


class RunCheckpointer:
    """Saves the whole run state every ``save_interval`` epochs and, at start, resumes from the newest save.

    The checkpoint holds the trainer's epoch and iteration (the engine this handler is attached to, added
    here so a bundle config needs no circular reference to its own trainer), plus ``objects``: networks, the
    optimizer and every stateful handler (VoG buffers, selection state). A killed run therefore continues
    where it stopped. Files are ``checkpoint_epoch=<N>.pt`` written by MONAI's ``CheckpointSaver`` (ignite
    saves to a temporary file and renames it, so a crash never leaves half a checkpoint). Attach it LAST so
    the epoch's save happens after every other handler has finished that epoch.

    Args:
        ckpt_dir: folder of the per-epoch checkpoints.
        objects: name -> object with ``state_dict``/``load_state_dict``.
        resume: load the newest checkpoint at start if one exists; False starts fresh.
        save_interval: epochs between saves.
        n_saved: how many checkpoints to keep.
        map_location: passed to ``torch.load``.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        objects: dict,
        resume: bool = True,
        save_interval: int = 1,
        n_saved: int = 1,
        map_location=None,
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.objects = dict(objects)
        self.resume = resume
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.map_location = map_location
        self.resumed_from: Path | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        state = {"trainer": engine, **self.objects}
        engine.add_event_handler(Events.STARTED, self._resume, state)
        CheckpointSaver(
            save_dir=str(self.ckpt_dir),
            save_dict=state,
            save_interval=self.save_interval,
            n_saved=self.n_saved,
            epoch_level=True,
        ).attach(engine)

    def _resume(self, engine: Engine, state: dict) -> None:
        path = latest_checkpoint(self.ckpt_dir) if self.resume else None
        if path is None:
            return
        CheckpointLoader(load_path=str(path), load_dict=state, map_location=self.map_location)(engine)
        self.resumed_from = path
        self.logger.info(f"resumed from {path} at epoch {engine.state.epoch}")
