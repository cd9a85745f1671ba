"""Parts that break during a run, for the fault tests: Hydra builds them from the config
(``+callbacks.damage._target_=faulty_parts.TruncateAfterFirstEpoch``), as a user's own are."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


class TruncateAfterFirstEpoch(pl.Callback):
    """Cuts every image file under ``folder`` to ``keep`` bytes once the first epoch ended: the
    file goes bad on disk while the run reads the folder."""

    def __init__(self, folder: str, keep: int = 40):
        self.folder, self.keep = Path(folder), keep

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            for image in sorted(self.folder.rglob("*.png")):
                image.write_bytes(image.read_bytes()[: self.keep])
