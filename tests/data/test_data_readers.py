import pytest

from lit_unitscale.data.errors import DataFormatError, EmptyDataError
from lit_unitscale.data.readers import read_conll, read_pronunciations, read_tsv


def test_conll_fixture_skips_docstart_and_reads_the_last_column(fixtures):
    sentences = read_conll(fixtures / "ner.conll")
    assert len(sentences) == 33
    words, tags = sentences[0]
    assert words == ["Anna", "Berg", "moved", "to", "Oslo", "last", "May", "."]
    assert tags == ["B-person", "I-person", "O", "O", "B-geo-loc", "O", "O", "O"]
    assert all("-DOCSTART-" not in words for words, _ in sentences)


def test_conll_blank_lines_and_space_separated_columns(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text("-DOCSTART- -X- O\n\n\nEU NNP B-ORG\nrejects VBZ O\n\n\n\nPeter B-PER\n")
    assert read_conll(path) == [(["EU", "rejects"], ["B-ORG", "O"]), (["Peter"], ["B-PER"])]


def test_conll_line_without_tag_is_a_format_error(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(DataFormatError, match="Line 2 of .*x.conll"):
        read_conll(path)


def test_conll_with_only_docstart_is_empty(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text("-DOCSTART- -X- O\n\n")
    with pytest.raises(EmptyDataError):
        read_conll(path)


def test_tsv(fixtures, tmp_path):
    rows = read_tsv(fixtures / "sentiment.tsv")
    assert len(rows) == 40
    assert rows[1] == ("negative", "The plot wanders for two hours and never arrives anywhere.")
    bad = tmp_path / "bad.tsv"
    bad.write_text("positive\tfine\nno tab here\n")
    with pytest.raises(DataFormatError, match="Line 2"):
        read_tsv(bad)


def test_pronunciations_group_variants_strip_stress_and_drop_duplicates(tmp_path):
    path = tmp_path / "d.dict"
    path.write_text(
        ";;; comment\nREAD R IY1 D\nread(2) R EH1 D # past\nread(3) R IY0 D\nzoo Z UW1\n"
    )
    assert read_pronunciations(path) == {
        "read": [["R", "IY", "D"], ["R", "EH", "D"]],  # read(3) equals read once unstressed
        "zoo": [["Z", "UW"]],
    }
    stressed = read_pronunciations(path, keep_stress=True)
    assert stressed["read"] == [["R", "IY1", "D"], ["R", "EH1", "D"], ["R", "IY0", "D"]]
