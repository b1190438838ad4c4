"""Readers for the file formats users point at by path: plain text, TSV (label, text), CoNLL
(token ... tag) and CMUdict-style pronouncing dictionaries. Each raises a ``DataError`` naming the
file and what was expected."""

import re
from pathlib import Path

from lit_unitscale.data.errors import DataFormatError, DataNotFoundError, EmptyDataError


def existing_path(path: str | Path, expected: str) -> Path:
    """``path`` as a Path, or ``DataNotFoundError`` saying what should have been there.

    Args:
        path: the path a user gave.
        expected: what should be there, for the error.
    """
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DataNotFoundError(f"Data path {resolved} does not exist; expected {expected}.")
    return resolved


def read_text(path: Path) -> str:
    """The text of a UTF-8 file (undecodable bytes replaced); ``EmptyDataError`` if it is blank.

    Args:
        path: the file.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise EmptyDataError(f"Data file {path} is empty; expected text.")
    return text


def read_lines(path: Path) -> list[str]:
    """Non-blank lines of a text file, stripped of surrounding whitespace.

    Args:
        path: the file.
    """
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def text_files(folder: Path) -> list[Path]:
    """The ``.txt`` files of a folder, sorted by name.

    Args:
        folder: the folder.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".txt")
    if not files:
        raise EmptyDataError(f"Data folder {folder} holds no .txt files; expected text files.")
    return files


def read_tsv(path: Path) -> list[tuple[str, str]]:
    """(label, text) pairs from lines ``label<TAB>text``; no header line.

    Args:
        path: the file.
    """
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab or not label.strip() or not text.strip():
            raise DataFormatError(
                f"Line {number} of {path} is not 'label<TAB>text': {line[:60]!r}."
            )
        rows.append((label.strip(), text.strip()))
    return rows


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    """Sentences as (tokens, tags) from a CoNLL file.

    One token per line: the token in the first column, its tag in the last (columns split by
    tabs or spaces); a blank line ends a sentence; ``-DOCSTART-`` lines are skipped.

    Args:
        path: the file.
    """
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        columns = line.split()
        if columns and columns[0] == "-DOCSTART-":
            continue
        if not columns:
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        if len(columns) < 2:
            raise DataFormatError(
                f"Line {number} of {path} has no tag column; expected 'token ... tag'."
            )
        tokens.append(columns[0])
        tags.append(columns[-1])
    if tokens:
        sentences.append((tokens, tags))
    if not sentences:
        raise EmptyDataError(f"Data file {path} holds no CoNLL sentences.")
    return sentences


_VARIANT = re.compile(r"\(\d+\)$")
_STRESS = re.compile(r"\d+$")


def read_pronunciations(path: Path, keep_stress: bool = False) -> dict[str, list[list[str]]]:
    """A CMUdict-style dictionary: ``word PH1 PH2 ...`` per line, variants written ``word(2)``,
    ``#`` starts a comment. Returns each lowercase word with its distinct pronunciations, in file
    order; stress digits are stripped from vowels unless ``keep_stress``.

    Args:
        path: the dictionary file.
        keep_stress: keep the vowels' stress digits.
    """
    entries: dict[str, list[list[str]]] = {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(";;;"):
            continue
        word, *phones = line.split()
        if not phones:
            raise DataFormatError(
                f"Line {number} of {path} has no phonemes; expected 'word PH1 PH2 ...'."
            )
        word = _VARIANT.sub("", word).lower()
        if not keep_stress:
            phones = [_STRESS.sub("", p) for p in phones]
        prons = entries.setdefault(word, [])
        if phones not in prons:  # variants may differ only in stress
            prons.append(phones)
    if not entries:
        raise EmptyDataError(f"Data file {path} holds no dictionary entries.")
    return entries
