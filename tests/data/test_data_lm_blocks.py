import torch

from lit_unitscale.data import CausalLMData
from lit_unitscale.data.causal_lm import TokenBlocks


def test_blocks_shift_labels_by_one_and_drop_the_training_tail():
    blocks = TokenBlocks(torch.arange(11), seq_len=3, pad_id=-1, keep_tail=False)
    # 10 targets (tokens 1..10) → 3 full blocks; the last target (10) is in the dropped tail.
    assert len(blocks) == 3
    assert blocks[0]["input_ids"].tolist() == [0, 1, 2]
    assert blocks[0]["labels"].tolist() == [1, 2, 3]
    assert blocks[2]["input_ids"].tolist() == [6, 7, 8]
    assert blocks[2]["labels"].tolist() == [7, 8, 9]


def test_evaluation_blocks_cover_every_token_once_with_a_padded_tail():
    blocks = TokenBlocks(torch.arange(11), seq_len=3, pad_id=99, keep_tail=True)
    assert len(blocks) == 4
    assert blocks[3]["input_ids"].tolist() == [9, 99, 99]
    assert blocks[3]["labels"].tolist() == [10, -100, -100]
    labels = torch.cat([blocks[i]["labels"] for i in range(len(blocks))])
    assert labels[labels != -100].tolist() == list(range(1, 11))


def test_exact_multiple_has_no_tail_block():
    assert len(TokenBlocks(torch.arange(7), seq_len=3, pad_id=0, keep_tail=True)) == 2


def test_word_level_data_adds_eos_per_line_and_builds_the_vocabulary(fixtures):
    lines = (fixtures / "text" / "train.txt").read_text().split("\n")
    lines = [line.split() for line in lines if line.strip()]
    data = CausalLMData(corpus=str(fixtures / "text"), tokenizer="word", seq_len=8, batch_size=4)
    # every distinct training word (the text already has <unk>) plus <eos>
    assert data.vocab_size == len({w for line in lines for w in line}) + 1
    assert len(data.tokens["train"]) == sum(len(line) for line in lines) + len(lines)
    eos = data.tokenizer.token_to_id("<eos>")
    first = data.tokens["train"][: len(lines[0]) + 1].tolist()
    assert data.tokenizer.decode(first[:-1]) == " ".join(lines[0]) and first[-1] == eos
    assert data.pad_id == eos

    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].shape == (4, 8) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])


def test_train_token_limit_and_bpe_round_trip(fixtures):
    data = CausalLMData(
        corpus=str(fixtures / "text" / "train.txt"),
        tokenizer="bpe",
        vocab_size=300,
        seq_len=16,
        batch_size=2,
        max_train_tokens=100,
    )
    assert data.vocab_size == 300
    assert len(data.tokens["train"]) == 100
    text = data.tokenizer.decode(data.tokens["valid"].tolist())
    # a single file is cut 90/5/5 in order; byte-level BPE keeps each line break as a token
    lines = [line.strip() for line in (fixtures / "text" / "train.txt").read_text().splitlines()]
    assert text.splitlines()[0].strip() == lines[int(0.9 * len(lines))]
