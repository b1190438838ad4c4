import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from lit_unitscale.data import NERData
from lit_unitscale.data.ner import TokenCollator, align_labels

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Anna", "visited", "Rey", "##kja", "##vik"]
B_PER, OUTSIDE, B_LOC = 1, 0, 3


def hand_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(
        models.WordPiece(vocab={t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def test_label_goes_on_the_first_piece_of_each_word():
    ids, labels, word_ids = align_labels(
        hand_tokenizer(),
        ["Anna", "visited", "Reykjavik"],
        [B_PER, OUTSIDE, B_LOC],
        2,
        3,
        max_len=16,
    )
    assert [VOCAB[i] for i in ids] == [
        "[CLS]", "Anna", "visited", "Rey", "##kja", "##vik", "[SEP]"
    ]  # fmt: skip
    assert labels == [-100, B_PER, OUTSIDE, B_LOC, -100, -100, -100]
    assert word_ids == [-1, 0, 1, 2, 2, 2, -1]


def test_truncation_keeps_cls_and_sep():
    ids, labels, word_ids = align_labels(
        hand_tokenizer(), ["Anna", "visited", "Reykjavik"], [B_PER, OUTSIDE, B_LOC], 2, 3, max_len=5
    )
    assert [VOCAB[i] for i in ids] == ["[CLS]", "Anna", "visited", "Rey", "[SEP]"]
    assert labels == [-100, B_PER, OUTSIDE, B_LOC, -100]
    assert word_ids == [-1, 0, 1, 2, -1]


def test_collator_pads_labels_and_word_ids():
    batch = [([2, 5, 3], ([-100, 1, -100], [-1, 0, -1])), ([2, 3], ([-100, -100], [-1, -1]))]
    out = TokenCollator(pad_id=0)(batch)
    assert out["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert out["labels"].tolist() == [[-100, 1, -100], [-100, -100, -100]]
    assert out["word_ids"].tolist() == [[-1, 0, -1], [-1, -1, -1]]
    assert out["attention_mask"].tolist() == [[True, True, True], [True, True, False]]


def test_ner_data_from_a_conll_file(fixtures):
    data = NERData(source=str(fixtures / "ner.conll"), vocab_size=150, batch_size=4)
    assert data.label_names == [
        "O", "B-company", "I-company", "B-geo-loc", "I-geo-loc",
        "B-movie", "I-movie", "B-person", "I-person",
    ]  # fmt: skip
    assert data.num_labels == 9
    assert sum(len(data.sentences[s]) for s in ("train", "valid", "test")) == 33
    batch = next(iter(data.val_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "word_ids"}
    assert batch["word_ids"].dtype == torch.long
    for row, (words, tags) in enumerate(data.sentences["valid"][:4]):
        scored = batch["labels"][row] != -100  # one scored piece per word
        assert scored.sum() == len(words)
        assert batch["word_ids"][row][scored].tolist() == list(range(len(words)))
        assert [data.label_names[i] for i in batch["labels"][row][scored]] == tags
