"""The data steps' progress bars (data_pipeline/progress.py, tqdm): the total is the number of documents the step
reads, a log that is not a terminal gets whole lines, and the bars change no output file."""

import io
import json
import re
from collections import Counter

import pytest
from tqdm import tqdm

from data_pipeline import filter as filter_cli
from data_pipeline import progress
from data_pipeline.filter import FilterSettings, filter_documents
from data_pipeline.readers import count_documents, read_documents

BAR_COUNT = re.compile(r"(\d+)/(\d+) \[")


def _paragraphs(count: int) -> list[str]:
    return [f"Paragraph {i} tells of the river and the stone walls, line {i}." for i in range(count)]


@pytest.mark.parametrize("split", ["blank_line", "line", "file"])
def test_count_documents_matches_read_documents_for_text(tmp_path, split):
    path = tmp_path / "raw.txt"
    # Leading and repeated blank lines, whitespace-only lines, CRLF and lone CR line ends, no final newline.
    path.write_bytes(b"\n\n  \nfirst\nstill first\n\n \t\nsecond\r\n\r\nthird\rthird b\n\n\nlast line")
    assert count_documents(str(path), text_split=split) == len(list(read_documents(str(path), text_split=split)))


def test_count_documents_matches_read_documents_for_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    records = [json.dumps({"text": text}) for text in _paragraphs(5)]
    path.write_text("\n" + "\n\n".join(records) + "\n   \n")
    assert count_documents(str(path)) == len(list(read_documents(str(path)))) == 5


def test_count_documents_reads_a_parquet_row_count(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    path = tmp_path / "docs.parquet"
    parquet.write_table(pyarrow.table({"text": _paragraphs(7)}), path, row_group_size=3)
    assert count_documents(str(path)) == len(list(read_documents(str(path)))) == 7


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _filter(tmp_path, name, raw):
    output = tmp_path / name
    filter_cli.main([str(raw), f"--output={output}", "--min_chars=8", "--min_words=2"])
    return output.read_bytes()


def test_filter_bar_counts_the_input_documents_and_changes_no_output(tmp_path, capsys, monkeypatch):
    documents = _paragraphs(9) + _paragraphs(2)  # two exact duplicates: 11 read, 9 kept
    raw = tmp_path / "raw.txt"
    raw.write_text("\n\n".join(documents) + "\n")

    logged = _filter(tmp_path, "logged.jsonl", raw)  # stderr is not a terminal under capsys
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)  # a log file gets whole lines, never in-place redraws
    assert all(line.startswith("filter logged.jsonl:") for line in lines)
    assert BAR_COUNT.search(lines[-1]).groups() == ("11", "11") and "kept=9" in lines[-1]

    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    on_terminal = _filter(tmp_path, "terminal.jsonl", raw)
    assert "\r" in terminal.getvalue() and BAR_COUNT.findall(terminal.getvalue())[-1] == ("11", "11")

    monkeypatch.setattr(progress, "bar", lambda description, **kwargs: tqdm(disable=True))
    without_bar = _filter(tmp_path, "plain.jsonl", raw)
    expected = "".join(
        json.dumps({"text": text}, ensure_ascii=False) + "\n"
        for text in filter_documents(read_documents(str(raw)), FilterSettings(min_chars=8, min_words=2), Counter())
    ).encode()
    assert logged == on_terminal == without_bar == expected
    assert len(expected.splitlines()) == 9


def test_filter_under_a_limit_counts_without_a_total(tmp_path, capsys):
    raw = tmp_path / "raw.txt"
    raw.write_text("\n\n".join(_paragraphs(6)) + "\n")
    filter_cli.main([str(raw), f"--output={tmp_path / 'out.jsonl'}", "--limit=2"])
    last = capsys.readouterr().err.splitlines()[-1]
    assert BAR_COUNT.search(last) is None and "docs [" in last and "kept=2" in last
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2
