import pytest

from lit_unitscale.data import (
    CausalLMData,
    DataNotFoundError,
    EmptyDataError,
    G2PData,
    NERData,
    SentimentData,
    TokenizerFileError,
)
from lit_unitscale.data.text_tokenizers import load_tokenizer


@pytest.mark.parametrize(
    "make", [CausalLMData, lambda p: SentimentData(source=p), lambda p: NERData(source=p)]
)
def test_missing_path_names_the_path(tmp_path, make):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(DataNotFoundError, match="nowhere.txt does not exist") as error:
        make(str(missing)).prepare_data()
    assert isinstance(error.value, FileNotFoundError)
    assert len(str(error.value).splitlines()) == 1


def test_empty_file_and_empty_folder(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(EmptyDataError, match="empty.txt is empty"):
        CausalLMData(corpus=str(empty)).prepare_data()
    folder = tmp_path / "texts"
    folder.mkdir()
    with pytest.raises(EmptyDataError, match="holds no .txt files"):
        CausalLMData(corpus=str(folder)).prepare_data()
    with pytest.raises(EmptyDataError):
        G2PData(source=str(empty)).prepare_data()


def test_folder_with_some_split_files_says_which_are_missing(tmp_path, fixtures):
    (tmp_path / "train.txt").write_text((fixtures / "text" / "train.txt").read_text())
    with pytest.raises(DataNotFoundError, match="none for valid, test"):
        CausalLMData(corpus=str(tmp_path)).prepare_data()


def test_corrupt_tokenizer_file(tmp_path, fixtures):
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"model": {"type": "BPE", "vocab": ')
    with pytest.raises(TokenizerFileError, match="tokenizer.json is not a valid"):
        load_tokenizer(broken)
    with pytest.raises(TokenizerFileError):
        SentimentData(
            source=str(fixtures / "sentiment.tsv"), tokenizer_path=str(broken)
        ).prepare_data()
    with pytest.raises(DataNotFoundError, match="absent.json does not exist"):
        load_tokenizer(tmp_path / "absent.json")


def test_tokenizer_without_special_tokens_is_refused(tmp_path, fixtures):
    word_level = CausalLMData(corpus=str(fixtures / "text"), tokenizer="word").tokenizer_file
    with pytest.raises(TokenizerFileError, match=r"lacks the special tokens \[PAD\]"):
        NERData(source=str(fixtures / "ner.conll"), tokenizer_path=str(word_level)).prepare_data()
