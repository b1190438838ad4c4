"""Small pieces the encoder and encoder-decoder tasks share."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.model_helpers import is_overridden


class PredictOnTestSplit:
    """``predict`` runs on the data module's test split when the data module has no predict
    split of its own (a data module's own ``predict_dataloader`` is kept)."""

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule
        if (
            stage == "predict"
            and dm is not None
            and not is_overridden("predict_dataloader", dm, LightningDataModule)
        ):
            dm.predict_dataloader = dm.test_dataloader
