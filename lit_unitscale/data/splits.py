"""Train/validation/test splits that never change: they depend only on the data and a fixed
seed, never on library random generators (whose streams may change between versions)."""

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from lit_unitscale.data.errors import DataNotFoundError

T = TypeVar("T")
SPLITS = ("train", "valid", "test")


def stable_fraction(key: str, seed: int | None = None) -> float:
    """A number in [0, 1) fixed by ``key`` (and ``seed``): its 8-byte blake2b digest / 2**64.

    Args:
        key: the item's key.
        seed: mixed into the hash when given.
    """
    text = key if seed is None else f"{seed}|{key}"
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of_key(key: str, fractions: tuple[float, float] = (0.90, 0.05)) -> str:
    """ "train", "valid" or "test" for ``key`` by its stable hash: the same key always lands in the
    same split (used for G2P words, so a word and all its pronunciations stay together).

    Args:
        key: the item's key.
        fractions: train and validation fractions; the rest is test.
    """
    u = stable_fraction(key)
    if u < fractions[0]:
        return "train"
    return "valid" if u < fractions[0] + fractions[1] else "test"


def seeded_split(
    items: Sequence[T], seed: int, fractions: tuple[float, float] = (0.8, 0.1)
) -> dict[str, list[T]]:
    """Shuffle ``items`` by the stable hash of (seed, index) and cut at ``fractions``; the rest is
    the test split. The same items and seed always give the same split.

    Args:
        items: the items to split.
        seed: seed of the hash order.
        fractions: train and validation fractions; the rest is test.
    """
    order = sorted(range(len(items)), key=lambda i: stable_fraction(str(i), seed))
    n_train = round(fractions[0] * len(items))
    n_valid = round(fractions[1] * len(items))
    cuts = {
        "train": order[:n_train],
        "valid": order[n_train : n_train + n_valid],
        "test": order[n_train + n_valid :],
    }
    return {name: [items[i] for i in sorted(idx)] for name, idx in cuts.items()}


def contiguous_split(
    items: Sequence[T], fractions: tuple[float, float] = (0.90, 0.05)
) -> dict[str, list[T]]:
    """First 90 % train, next 5 % validation, last 5 % test (for running text, where a random
    split by line would leak context between splits).

    Args:
        items: the items, in order.
        fractions: train and validation fractions; the rest is test.
    """
    n_train = int(fractions[0] * len(items))
    n_valid = int(fractions[1] * len(items))
    return {
        "train": list(items[:n_train]),
        "valid": list(items[n_train : n_train + n_valid]),
        "test": list(items[n_train + n_valid :]),
    }


def given_split_files(folder: Path) -> dict[str, Path] | None:
    """If ``folder`` holds a file for each split (``train.*``,
    ``valid.*``/``validation.*``/``dev.*``, ``test.*``), return them; if it holds none of
    them, return None.

    Args:
        folder: the folder to look in.
    """
    aliases = {"train": ("train",), "valid": ("valid", "validation", "dev"), "test": ("test",)}
    found: dict[str, Path] = {}
    for split, stems in aliases.items():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.stem in stems:
                found[split] = path
                break
    if not found:
        return None
    missing = [split for split in SPLITS if split not in found]
    if missing:
        raise DataNotFoundError(
            f"Folder {folder} has split files for {', '.join(sorted(found))} but none for "
            f"{', '.join(missing)}; expected train.*, valid.* (or dev.*) and test.*."
        )
    return found
