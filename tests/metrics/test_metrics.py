"""Edit distance, G2P error rates and entity-span F1 against hand-checked values."""

from __future__ import annotations

import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_unitscale.metrics import G2PErrorRates, SpanF1, bio_spans, edit_distance


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("", "", 0),
        ("abc", "", 3),
        ("", "ab", 2),
        ("kitten", "sitting", 3),  # k->s, e->i, +g
        ("flaw", "lawn", 2),  # -f, +n
        (["K", "AE", "T"], ["K", "AE", "T"], 0),
        (["K", "AE", "T"], ["K", "AH", "T", "S"], 2),
    ],
)
def test_edit_distance(a, b, expected):
    assert edit_distance(a, b) == expected
    assert edit_distance(b, a) == expected


def test_wer_per_take_the_closest_of_several_references():
    m = G2PErrorRates()
    m.update(
        predictions=[
            ["T", "AH", "M", "EY", "T", "OW"],  # matches the 2nd reference: correct
            ["K", "AE", "T"],  # 1 substitution from "K AH T" (len 3)
            ["R", "IY", "D"],  # 'read': 2nd ref "R EH D" 1 sub; 1st "R IY D" exact
            ["D", "AO"],  # "D AO G": 1 deletion (len 3)
        ],
        references=[
            [["T", "AH", "M", "AA", "T", "OW"], ["T", "AH", "M", "EY", "T", "OW"]],
            [["K", "AH", "T"]],
            [["R", "EH", "D"], ["R", "IY", "D"]],
            [["D", "AO", "G"], ["D", "AA", "G", "Z"]],
        ],
    )
    out = m.compute()
    # word errors: cat, dog -> 2 of 4. Phoneme errors 0+1+0+1 over reference lengths 6+3+3+3.
    assert out["wer"].item() == pytest.approx(0.5)
    assert out["per"].item() == pytest.approx(2 / 15)


def test_per_prefers_the_shorter_reference_on_equal_distance():
    m = G2PErrorRates()
    # "A B X" is 1 edit from both "A B" (len 2) and "A B X Y" (len 4): the shorter counts.
    m.update([["A", "B", "X"]], [[["A", "B", "X", "Y"], ["A", "B"]]])
    assert m.compute()["per"].item() == pytest.approx(1 / 2)


def test_error_rates_need_a_reference():
    with pytest.raises(ValueError, match="reference"):
        G2PErrorRates().update([["A"]], [[]])


def test_bio_spans_follow_conlleval():
    assert bio_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    # I- without B- opens a span; so does I- of another type.
    assert bio_spans(["O", "I-PER", "I-PER"]) == {("PER", 1, 2)}
    assert bio_spans(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 2)}
    # B- after B- of the same type starts a new span; a span may end the sentence.
    assert bio_spans(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 0), ("PER", 1, 2)}
    assert bio_spans(["O", "O"]) == set()
    assert bio_spans(["I-geo-loc"]) == {("geo-loc", 0, 0)}


def test_span_f1_per_type_and_micro():
    m = SpanF1.from_tags(["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])
    assert m.types == ["LOC", "PER"]
    gold = [
        ["B-PER", "I-PER", "O", "B-LOC"],
        ["B-LOC", "I-LOC", "O", "B-PER"],
    ]
    pred = [
        ["B-PER", "I-PER", "O", "O"],  # PER right, LOC missed
        ["B-LOC", "O", "O", "I-PER"],  # LOC boundary wrong (0,0 vs 0,1), PER right via I-
    ]
    m.update(pred, gold)
    out = {k: v.item() for k, v in m.compute().items()}
    # PER: predicted 2, gold 2, tp 2. LOC: predicted 1, gold 2, tp 0.
    assert out["PER/precision"] == 1.0 and out["PER/recall"] == 1.0 and out["PER/f1"] == 1.0
    assert out["LOC/precision"] == 0.0 and out["LOC/recall"] == 0.0 and out["LOC/f1"] == 0.0
    # micro: tp 2, predicted 3, gold 4 -> P 2/3, R 1/2, F1 4/7.
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(1 / 2)
    assert out["f1"] == pytest.approx(4 / 7)


def test_span_f1_is_zero_without_entities_and_checks_lengths():
    m = SpanF1(["PER"])
    m.update([["O"]], [["O"]])
    assert m.compute()["f1"].item() == 0.0
    with pytest.raises(ValueError, match="tags"):
        m.update([["O", "O"]], [["O"]])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    spans = SpanF1(["PER"])
    rates = G2PErrorRates()
    if rank == 0:
        spans.update([["B-PER", "O"]], [["B-PER", "O"]])  # tp
        rates.update([["A"]], [[["A"]]])
    else:
        spans.update([["O", "B-PER"]], [["B-PER", "O"]])  # fp + fn
        rates.update([["B"]], [[["A", "C"]]])
    results[rank] = (spans.compute()["f1"].item(), rates.compute()["wer"].item())
    dist.destroy_process_group()


def test_metrics_sum_their_states_across_processes():
    results = mp.Manager().dict()
    mp.spawn(_sync_worker, args=(_free_port(), results), nprocs=2)
    # global: tp 1, predicted 2, gold 2 -> F1 0.5; words 2, errors 1 -> WER 0.5.
    assert results[0] == results[1] == pytest.approx((0.5, 0.5))
