"""Label vocabularies for classification data."""

from collections.abc import Iterable


def class_names(labels: Iterable[str]) -> list[str]:
    """Distinct labels, in numeric order when they are all integers, else alphabetical.

    Args:
        labels: the label of every example.
    """
    distinct = set(labels)
    if all(label.lstrip("-").isdigit() for label in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def bio_names(tags: Iterable[str]) -> list[str]:
    """ "O", then B-/I- for each entity type in alphabetical order, then any other tags.

    Args:
        tags: the tag of every word.
    """
    distinct = set(tags)
    types = sorted({tag[2:] for tag in distinct if tag[:2] in ("B-", "I-")})
    others = sorted(t for t in distinct if t != "O" and t[:2] not in ("B-", "I-"))
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")] + others
