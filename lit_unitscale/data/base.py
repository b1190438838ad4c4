"""What every datamodule here shares: loaders, seeding, lazy one-time preparation, and the
choice between training a tokenizer and loading one by path."""

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from lit_unitscale.errors import RecipeError

from .text_tokenizers import (
    PAD,
    SPECIAL_TOKENS,
    TokenizerKind,
    cached_tokenizer,
    load_tokenizer,
    token_id,
)


class BaseDataModule(LightningDataModule):
    """Loaders and lazy preparation. Subclasses implement `_prepare()`, which fills
    `self._datasets` ({"train", "valid", "test"} → map-style dataset) and anything the public
    properties read; it runs once, on first access of a property or in `prepare_data`/`setup`.
    Every step it takes is cached on disk under a file lock, so all DDP ranks may run it."""

    def __init__(self, batch_size: int, num_workers: int, seed: int) -> None:
        """
        Args:
            batch_size: Examples per batch on each process.
            num_workers: DataLoader worker processes.
            seed: Seed of the training shuffle order (and of any random masking).
        """
        super().__init__()
        if batch_size < 1:
            raise RecipeError(f"data: batch_size must be >= 1 (per process), got {batch_size}")
        if num_workers < 0:
            raise RecipeError(f"data: num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._datasets: dict[str, Dataset] = {}
        self._prepared = False
        self._shuffle_generator: torch.Generator | None = None
        self._collators: dict[str, Callable | None] = {}

    def _prepare(self) -> None:
        raise NotImplementedError

    def _ensure_prepared(self) -> None:
        if not self._prepared:
            self._prepare()
            self._prepared = True

    @property
    def datasets(self) -> dict[str, Dataset]:
        """The map-style dataset of each split: "train", "valid", "test"."""
        self._ensure_prepared()
        return self._datasets

    def prepare_data(self) -> None:
        self._ensure_prepared()

    def setup(self, stage: str | None = None) -> None:
        self._ensure_prepared()

    def _collate(self, split: str) -> Callable | None:
        """The collate function for `split` (None: default collation)."""
        return None

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        if train and self._shuffle_generator is None:
            # One generator for the module's lifetime: a reloaded training loader continues its
            # stream (new order, new worker seeds) instead of replaying the first epoch.
            self._shuffle_generator = torch.Generator().manual_seed(self.seed)
        if split not in self._collators:  # kept, so a collator's random state carries on
            self._collators[split] = self._collate(split)
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=train,
            # Lightning swaps in a DistributedSampler (seeded by its own seed) under DDP.
            generator=self._shuffle_generator if train else None,
            num_workers=self.num_workers,
            # Persistent workers keep their collator's random state across epochs.
            persistent_workers=self.num_workers > 0,
            collate_fn=self._collators[split],
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Predictions run over the test split."""
        return self._loader("test")


class TokenizedDataModule(BaseDataModule):
    """A datamodule whose text goes through an HF tokenizer, trained here or loaded by path.
    Subclasses set `self._tokenizer` and `self._tokenizer_file` in `_prepare()`."""

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer in use."""
        self._ensure_prepared()
        return self._tokenizer

    @property
    def pad_id(self) -> int:
        """Id of [PAD] (modules whose vocabulary has none override this)."""
        self._ensure_prepared()
        return token_id(self._tokenizer, PAD)

    @property
    def tokenizer_file(self) -> Path:
        """The tokenizer.json in use: save it beside a checkpoint so fine-tuning reuses it."""
        self._ensure_prepared()
        return self._tokenizer_file

    @property
    def vocab_size(self) -> int:
        """Size of the token vocabulary (the model's embedding rows)."""
        return self.tokenizer.get_vocab_size()


class ListDataset(Dataset):
    """A map-style dataset over a list of prepared examples."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def resolve_tokenizer(
    kind: TokenizerKind,
    vocab_size: int | None,
    tokenizer_path: str | Path | None,
    training_text: Callable[[], Sequence[str]],
    required_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> tuple[Tokenizer, Path]:
    """Load `tokenizer_path` if given, else train (or find cached) a `kind` tokenizer on
    `training_text()`. Returns the tokenizer and its tokenizer.json path."""
    if tokenizer_path is not None:
        path = Path(tokenizer_path).expanduser()
    else:
        path = cached_tokenizer(kind, training_text(), vocab_size)
    return load_tokenizer(path, required_tokens), path
