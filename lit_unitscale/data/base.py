"""What every datamodule here shares: loaders, seeding, lazy one-time preparation, and the
choice between training a tokenizer and loading one by path."""

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset, default_collate
from torch.utils.data.distributed import DistributedSampler

from lit_unitscale.data.text_tokenizers import (
    PAD,
    SPECIAL_TOKENS,
    TokenizerKind,
    cached_tokenizer,
    load_tokenizer,
    token_id,
)
from lit_unitscale.errors import RecipeError

# Batch key of evaluation batches under several processes: False marks an example repeated only
# so that every process runs as many batches (metrics skip it; forwards still run on it).
COUNTED = "counted"


class EvalSampler(DistributedSampler):
    """``DistributedSampler``'s evaluation order (dataset order, padded by repeating examples
    from the start, dealt round-robin) that marks the repeats: it yields ``(index, counted)``.

    Every process runs the same number of batches, which sharded forwards (FSDP2, ZeRO-3) and
    collective metrics need, and each example is counted exactly once over all processes.
    Being a ``DistributedSampler``, Lightning keeps it instead of injecting its own.

    Args:
        dataset: the map-style dataset.
        num_replicas: data-parallel processes.
        rank: this process's data-parallel rank.
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self) -> Iterator[tuple[int, bool]]:  # type: ignore[override]
        n = len(self.dataset)
        for position in range(self.rank, self.total_size, self.num_replicas):
            yield position % n, position < n


class _MarkedDataset(Dataset):
    """Reads ``(index, counted)`` keys from :class:`EvalSampler`; returns ``(example, counted)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, bool]) -> tuple[Any, bool]:
        index, counted = key
        return self.dataset[index], counted


class _MarkedCollate:
    """Collates the examples as ``collate`` does and adds the :data:`COUNTED` flags."""

    def __init__(self, collate: Callable | None) -> None:
        self.collate = collate or default_collate

    def __call__(self, items: list[tuple[Any, bool]]) -> dict[str, Any]:
        batch = self.collate([example for example, _ in items])
        if not isinstance(batch, dict):
            raise TypeError(f"evaluation batches must be dicts to carry {COUNTED!r} flags")
        batch[COUNTED] = torch.tensor([counted for _, counted in items], dtype=torch.bool)
        return batch


class BaseDataModule(LightningDataModule):
    """Loaders and lazy preparation. Subclasses implement ``_prepare()``, which fills
    ``self._datasets`` ({"train", "valid", "test"} → map-style dataset) and anything the public
    properties read; it runs once, on first access of a property or in ``prepare_data``/``setup``.
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
        """The collate function for ``split`` (None: default collation)."""
        return None

    def _eval_replicas(self) -> dict[str, int] | None:
        """``num_replicas`` and ``rank`` of the data-parallel processes (None: one process)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size == 1:
            return None
        kwargs = trainer.strategy.distributed_sampler_kwargs or {}
        return {"num_replicas": int(kwargs["num_replicas"]), "rank": int(kwargs["rank"])}

    def _loader(self, split: str, mark_repeats: bool = True) -> DataLoader:
        """The loader of ``split``.

        Args:
            split: "train", "valid" or "test".
            mark_repeats: evaluation under several processes: an :class:`EvalSampler` whose
                repeated examples the batches flag as not :data:`COUNTED`.
        """
        train = split == "train"
        if train and self._shuffle_generator is None:
            # One generator for the module's lifetime: a reloaded training loader continues its
            # stream (new order, new worker seeds) instead of replaying the first epoch.
            self._shuffle_generator = torch.Generator().manual_seed(self.seed)
        if split not in self._collators:  # kept, so a collator's random state carries on
            self._collators[split] = self._collate(split)
        dataset, collate, sampler = self.datasets[split], self._collators[split], None
        replicas = None if train or not mark_repeats else self._eval_replicas()
        if replicas is not None:
            sampler = EvalSampler(dataset, **replicas)
            dataset, collate = _MarkedDataset(dataset), _MarkedCollate(collate)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            # Lightning swaps in a DistributedSampler (seeded by its own seed) under DDP.
            sampler=sampler,
            generator=self._shuffle_generator if train else None,
            num_workers=self.num_workers,
            # Persistent workers keep their collator's random state across epochs.
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Predictions run over the test split (Lightning deals it out without repeats)."""
        return self._loader("test", mark_repeats=False)


class TokenizedDataModule(BaseDataModule):
    """A datamodule whose text goes through an HF tokenizer, trained here or loaded by path.
    Subclasses set ``self._tokenizer`` and ``self._tokenizer_file`` in ``_prepare()``."""

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
    """A map-style dataset over a list of prepared examples.

    Args:
        items: the examples, in order.
    """

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
    """Load ``tokenizer_path`` if given, else train (or find cached) a ``kind`` tokenizer on
    ``training_text()``. Returns the tokenizer and its tokenizer.json path.

    Args:
        kind: tokenizer kind to train.
        vocab_size: vocabulary size to train.
        tokenizer_path: a tokenizer.json to load instead (None: train or find one).
        training_text: returns the training lines (called only when training).
        required_tokens: special tokens the tokenizer must hold.
    """
    if tokenizer_path is not None:
        path = Path(tokenizer_path).expanduser()
    else:
        path = cached_tokenizer(kind, training_text(), vocab_size)
    return load_tokenizer(path, required_tokens), path
