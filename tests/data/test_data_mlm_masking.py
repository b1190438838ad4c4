import torch

from lit_unitscale.data import MaskedLMData
from lit_unitscale.data.masked_lm import MaskingCollator

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 1000


def collator(fixed: bool = False, seed: int = 0) -> MaskingCollator:
    return MaskingCollator(
        pad_id=PAD,
        mask_id=MASK,
        special_ids=[PAD, UNK, CLS, SEP, MASK],
        vocab_size=VOCAB,
        mask_prob=0.15,
        seed=seed,
        fixed_per_example=fixed,
    )


def test_masking_statistics_follow_bert():
    g = torch.Generator().manual_seed(1)
    batch = []
    for i in range(400):
        body = torch.randint(5, VOCAB, (250,), generator=g)
        body[::50] = UNK  # an [UNK] inside the text is special too
        batch.append((i, torch.cat([torch.tensor([CLS]), body, torch.tensor([SEP])])))
    original = torch.stack([ids for _, ids in batch])
    out = collator()(batch)

    special = torch.isin(original, torch.tensor([PAD, UNK, CLS, SEP, MASK]))
    chosen = out["labels"] != -100
    assert not chosen[special].any()
    assert torch.equal(out["input_ids"][special], original[special])
    assert torch.equal(out["labels"][chosen], original[chosen])

    rate = chosen.sum() / (~special).sum()  # ~98k candidates: std of the rate ≈ 0.001
    assert abs(rate.item() - 0.15) < 0.006
    n = chosen.sum().item()  # ~14.7k chosen: std of each share ≤ 0.004
    masked = (out["input_ids"] == MASK) & chosen
    kept = (out["input_ids"] == original) & chosen
    randomized = chosen & ~masked & ~kept
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    assert abs(randomized.sum().item() / n - 0.1) < 0.015
    assert abs(kept.sum().item() / n - 0.1) < 0.015
    replaced = out["input_ids"][randomized]
    assert not torch.isin(replaced, torch.tensor([PAD, UNK, CLS, SEP, MASK])).any()


def test_padding_and_attention_mask():
    batch = [(0, torch.tensor([CLS, 10, 11, SEP])), (1, torch.tensor([CLS, 12, SEP]))]
    out = collator()(batch)
    assert out["input_ids"].shape == (2, 4)
    assert out["attention_mask"].dtype == torch.bool
    assert out["attention_mask"].tolist() == [[True] * 4, [True, True, True, False]]
    assert out["input_ids"][1, 3] == PAD and out["labels"][1, 3] == -100


def test_evaluation_masks_are_fixed_per_example_and_training_masks_move():
    examples = [(i, torch.arange(5, 205)) for i in range(4)]
    a = collator(fixed=True)(examples)
    b = collator(fixed=True)(examples[::-1])  # same examples, other batch order
    assert torch.equal(a["labels"], b["labels"].flip(0))

    train = collator(seed=3)
    first, second = train(examples), train(examples)
    assert not torch.equal(first["labels"], second["labels"])
    assert torch.equal(collator(seed=3)(examples)["labels"], first["labels"])


def test_masked_lm_data_batches_and_tokenizer_reuse(fixtures):
    data = MaskedLMData(
        corpus=str(fixtures / "text"), tokenizer="wordpiece", vocab_size=200, seq_len=24
    )
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["input_ids"].shape[1] <= 24
    assert (batch["input_ids"][:, 0] == data.tokenizer.token_to_id("[CLS]")).all()
    assert (batch["labels"][~batch["attention_mask"]] == -100).all()
    # PTB-style "<unk>" in the text becomes the [UNK] token, never split into pieces
    assert "<" not in data.tokenizer.get_vocab()

    assert data.tokenizer_file.is_file()
    again = MaskedLMData(corpus=str(fixtures / "text"), tokenizer_path=str(data.tokenizer_file))
    assert again.vocab_size == data.vocab_size and again.mask_id == data.mask_id


def test_training_masks_change_between_epochs_and_repeat_for_a_seed(fixtures):
    def module() -> MaskedLMData:
        corpus = str(fixtures / "text")
        return MaskedLMData(corpus=corpus, vocab_size=200, seq_len=24, batch_size=8, seed=5)

    data = module()
    loader = data.train_dataloader()
    epoch_1 = [batch["labels"] for batch in loader]
    epoch_2 = [batch["labels"] for batch in loader]
    reloaded = [batch["labels"] for batch in data.train_dataloader()]
    assert not torch.equal(epoch_1[0], epoch_2[0])
    assert not torch.equal(epoch_1[0], reloaded[0])
    assert torch.equal(next(iter(module().train_dataloader()))["labels"], epoch_1[0])
