"""``predict`` writes what a person reads to ``predictions.jsonl`` in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_unitscale.data.g2p import arpabet
from tests.tasks.conftest import cli


def rows_of(root: Path) -> list[dict]:
    lines = (root / "predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("kind", ["causal", "mlm", "sentiment", "ner", "g2p"])
def test_predict_writes_one_readable_row_per_input(kind: str, tmp_path: Path) -> None:
    run = cli("predict", kind, tmp_path, "--trainer.limit_predict_batches", "1")
    outputs = run.trainer.predict_loop.predictions
    rows = rows_of(tmp_path)
    first = outputs[0]
    inputs = len(next(v for v in first.values() if hasattr(v, "__len__")))
    assert len(rows) == inputs
    dm = run.datamodule
    if kind == "causal":
        vocab = set(dm.tokenizer.get_vocab())
        for row in rows:
            assert row["prompt"] and row["reference"]
            assert set(row["continuation"].split()) <= vocab
            assert row["nll"] > 0
    elif kind == "mlm":
        vocab = set(dm.tokenizer.get_vocab())
        assert any(row["fills"] for row in rows)
        for row in rows:
            tokens = row["text"].split()
            for fill in row["fills"]:
                # Masked positions show [MASK] (or BERT's random or kept token) in the text.
                assert 0 <= fill["position"] < len(tokens) and fill["answer"] in vocab
                assert len(fill["top"]) == 3 and set(fill["top"]) <= vocab
    elif kind == "sentiment":
        for row, label in zip(rows, first["labels"], strict=True):
            assert row["label"] == label and row["text"]
            assert 0.5 <= row["probability"] <= 1
    elif kind == "ner":
        types = {name[2:] for name in dm.label_names if name != "O"}
        for row, tags in zip(rows, first["tags"], strict=True):
            assert row["tags"] == tags and len(row["words"]) == len(tags)
            for span in row["spans"]:
                assert span["type"] in types
                assert span["text"] == " ".join(row["words"][span["start"] : span["end"]])
    else:
        symbols = set(arpabet(False))
        for row, word in zip(rows, first["words"], strict=True):
            assert row["word"] == word
            assert set(row["phonemes"].split()) <= symbols
