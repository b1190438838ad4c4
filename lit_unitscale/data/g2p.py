"""Grapheme-to-phoneme conversion: spelling in, ARPAbet phonemes out (encoder-decoder models)."""

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from lit_unitscale.data.base import BaseDataModule, ListDataset
from lit_unitscale.data.packages import CMUDICT, fetch
from lit_unitscale.data.readers import existing_path, read_pronunciations
from lit_unitscale.data.splits import SPLITS, split_of_key

IGNORE_INDEX = -100
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"

# The 39 ARPAbet phonemes of CMUdict; vowels carry stress 0/1/2 when stress is kept.
ARPABET_VOWELS = "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split()
ARPABET_CONSONANTS = "B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split()


def arpabet(keep_stress: bool) -> list[str]:
    """The ARPAbet phoneme symbols, sorted.

    Args:
        keep_stress: list each vowel with its stress digits 0, 1 and 2.
    """
    vowels = [v + s for v in ARPABET_VOWELS for s in "012"] if keep_stress else ARPABET_VOWELS
    return sorted(vowels + ARPABET_CONSONANTS)


class SymbolVocab:
    """Symbols ↔ ids, with ``<pad>``=0, ``<unk>``=1, ``<bos>``=2, ``<eos>``=3 first.

    Args:
        symbols: the symbols after the four special ones, in id order.
    """

    def __init__(self, symbols: Iterable[str]) -> None:
        specials = [PAD, UNK, BOS, EOS]
        self.symbols = specials + sorted(set(symbols) - set(specials))
        self.index = {symbol: i for i, symbol in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, symbols: Iterable[str]) -> list[int]:
        """Ids of ``symbols``; an unknown symbol is ``<unk>``.

        Args:
            symbols: the symbols to encode.
        """
        unk = self.index[UNK]
        return [self.index.get(symbol, unk) for symbol in symbols]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Symbols up to the first ``<eos>``, skipping ``<pad>`` and ``<bos>``.

        Args:
            ids: the ids to decode.
        """
        out = []
        for i in ids:
            symbol = self.symbols[int(i)]
            if symbol == EOS:
                break
            if symbol not in (PAD, BOS):
                out.append(symbol)
        return out


def _pad(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class G2PCollator:
    """Pads a batch of (word index, letters, phonemes): letters for the encoder, ``<bos>`` +
    phonemes as decoder inputs and phonemes + ``<eos>`` as labels.

    Args:
        pad_id: id that pads letters and decoder inputs.
        bos_id: id of ``<bos>``.
        eos_id: id of ``<eos>``.
    """

    def __init__(self, pad_id: int, bos_id: int, eos_id: int) -> None:
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    def __call__(self, batch: list[tuple[int, list[int], list[int]]]) -> dict[str, Tensor]:
        input_ids = _pad([letters for _, letters, _ in batch], self.pad_id)
        return {
            "input_ids": input_ids,
            "attention_mask": input_ids != self.pad_id,
            "decoder_input_ids": _pad([[self.bos_id, *ph] for _, _, ph in batch], self.pad_id),
            "labels": _pad([[*ph, self.eos_id] for _, _, ph in batch], IGNORE_INDEX),
            "ref_index": torch.tensor([ref for ref, _, _ in batch], dtype=torch.long),
        }


class G2PData(BaseDataModule):
    """Letters → ARPAbet phonemes from CMUdict or your own dictionary file.

    Words are split 90/5/5 into train/valid/test by the blake2b hash of the lowercase word, so a
    word's split never changes and all its pronunciations stay together. Training has one example
    per (word, pronunciation); validation and test one per word, its first pronunciation as the
    teacher-forced target, and ``references(split, i)`` lists all its pronunciations (for WER).
    Stress digits are stripped by default (39 phonemes; the usual G2P setting).

    Batches: ``{"input_ids": [B, S] letters, "attention_mask": [B, S] bool,
    "decoder_input_ids": [B, T] (<bos> + phonemes), "labels": [B, T] (phonemes + <eos>, -100
    pad), "ref_index": [B]}``.
    """

    def __init__(
        self,
        source: str = "cmudict",
        keep_stress: bool = False,
        batch_size: int = 64,
        max_train_words: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        """
        Args:
            source: "cmudict" or a dictionary file in its format: ``word PH1 PH2 ...`` per line,
                variants as ``word(2)``, ``#`` comments.
            keep_stress: Keep vowel stress digits (AH0, AH1, ...) instead of stripping them.
            batch_size: Examples per batch on each process.
            max_train_words: Keep only the first this many training words (tiny runs).
            num_workers: DataLoader worker processes.
            seed: Seed of the training shuffle order.
        """
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.source = source
        self.keep_stress = keep_stress
        self.max_train_words = max_train_words
        self._words: dict[str, list[str]] = {}
        self._references: dict[str, list[list[list[int]]]] = {}

    def _prepare(self) -> None:
        if self.source == "cmudict":
            path = fetch(CMUDICT) / "cmudict.dict"
        else:
            path = existing_path(self.source, '"cmudict" or a pronouncing dictionary file')
        entries = read_pronunciations(path, keep_stress=self.keep_stress)
        self.letters = SymbolVocab(ch for word in entries for ch in word)
        self.phonemes = SymbolVocab(
            arpabet(self.keep_stress)
            + [p for prons in entries.values() for pr in prons for p in pr]
        )
        by_split: dict[str, list[str]] = {split: [] for split in SPLITS}
        for word in entries:
            by_split[split_of_key(word)].append(word)
        if self.max_train_words is not None:
            by_split["train"] = by_split["train"][: self.max_train_words]
        for split, words in by_split.items():
            self._words[split] = words
            refs = [[self.phonemes.encode(p) for p in entries[word]] for word in words]
            self._references[split] = refs
            examples = []  # (ref_index, letter ids, phoneme ids)
            for i, word in enumerate(words):
                letters = self.letters.encode(word)
                targets = refs[i] if split == "train" else refs[i][:1]
                examples.extend((i, letters, target) for target in targets)
            self._datasets[split] = ListDataset(examples)

    def _collate(self, split: str) -> G2PCollator:
        return G2PCollator(self.pad_id, self.bos_id, self.eos_id)

    def references(self, split: str, index: int) -> list[list[int]]:
        """All pronunciations (phoneme ids, no <bos>/<eos>) of word ``index`` of ``split``, the
        ``ref_index`` of a batch.

        Args:
            split: "train", "valid" or "test".
            index: the word's index in the split.
        """
        self._ensure_prepared()
        return self._references[split][index]

    def decode_phonemes(self, ids: Iterable[int]) -> list[str]:
        """Phoneme symbols of ``ids``, up to the first <eos>, without <pad>/<bos>.

        Args:
            ids: phoneme ids.
        """
        self._ensure_prepared()
        return self.phonemes.decode(ids)

    @property
    def words(self) -> dict[str, list[str]]:
        """Words per split; ``ref_index`` in a batch indexes this list."""
        self._ensure_prepared()
        return self._words

    @property
    def vocab_size(self) -> int:
        """Size of the letter (source) vocabulary."""
        self._ensure_prepared()
        return len(self.letters)

    @property
    def tgt_vocab_size(self) -> int:
        """Size of the phoneme (target) vocabulary."""
        self._ensure_prepared()
        return len(self.phonemes)

    @property
    def pad_id(self) -> int:
        """Padding id, the same (0) in both vocabularies."""
        return 0

    @property
    def bos_id(self) -> int:
        """Id of <bos> in the phoneme vocabulary."""
        return 2

    @property
    def eos_id(self) -> int:
        """Id of <eos> in the phoneme vocabulary."""
        return 3
