"""Read the rows of data files (.json array or lines, .jsonl, .csv, .parquet, .txt), each with where it came from.

A row's `where` is "file:line row N" for JSON files and "file row N" for tables (N counts
examples from 0, header excluded), so every error about it points into the file.
Malformed JSONL lines, and JSONL/text lines that are not UTF-8, go to the bad-row policy; a .json
array that does not parse has no rows to skip, so it is always an error. A UTF-8 byte-order mark
at the start of a file is accepted (editors on Windows write one). Rows are read lazily, so the
planner can stop at a dataset's first good row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import DataError


@dataclass
class Row:
    data: dict
    where: str


OnBad = Callable[[DataError], None]


def _line(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _json_array(path: Path, on_bad: OnBad) -> Iterator[Row]:
    """Decode element by element so each row knows its line."""
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    spaces = " \t\r\n"
    position = len(text) - len(text.lstrip(spaces))
    if text[position : position + 1] == "{":  # JSON Lines named .json: `datasets` (so LLaMA-Factory) reads these too
        yield from _jsonl(path, on_bad)
        return
    if text[position : position + 1] != "[":
        raise DataError(
            f"{path}:{_line(text, position)}: expected a JSON array of examples ([{{...}}, ...]) or one object per line"
        )
    position += 1
    first, index = True, 0
    line, counted = 1, 0  # line at `counted`, advanced incrementally (counting from 0 each row is quadratic)
    while True:
        while position < len(text) and text[position] in spaces:
            position += 1
        if first and text[position : position + 1] == "]":
            break
        first = False
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{err.lineno}: invalid JSON: {err.msg}. Fix: repair the file at that line"
            ) from None
        line += text.count("\n", counted, position)
        counted = position
        row = Row(value, f"{path}:{line} row {index}")
        index += 1
        if isinstance(value, dict):
            yield row
        else:
            on_bad(DataError(f"{row.where}: expected an object per example, got {type(value).__name__}"))
        position = end
        while position < len(text) and text[position] in spaces:
            position += 1
        if text[position : position + 1] == ",":
            position += 1
        elif text[position : position + 1] == "]":
            break
        else:
            raise DataError(f"{path}:{_line(text, position)}: invalid JSON: expected ',' or ']' after an example")


def _lines(path: Path, on_bad: OnBad) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line; a line that is not UTF-8 is one bad row, not a bad file."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                on_bad(
                    DataError(
                        f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start} of the line). "
                        "Fix: save the file as UTF-8, or set data.on_bad_row: skip"
                    )
                )
                continue
            if line.strip():
                yield number, line.rstrip("\r\n")


def _jsonl(path: Path, on_bad: OnBad) -> Iterator[Row]:
    for index, (number, line) in enumerate(_lines(path, on_bad)):
        where = f"{path}:{number} row {index}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            on_bad(DataError(f"{where}: invalid JSON line: {err.msg} (column {err.colno})"))
            continue
        if isinstance(value, dict):
            yield Row(value, where)
        else:
            on_bad(DataError(f"{where}: expected an object per line, got {type(value).__name__}"))


def _csv(path: Path, on_bad: OnBad) -> Iterator[Row]:
    """Every cell as text, a missing trailing cell as "" (never NaN); the standard library's reader, so
    `launch plan` reads a CSV's first rows without importing pandas."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, restval="")
        for index, data in enumerate(reader):
            where = f"{path} row {index}"
            if None in data:  # more cells than the header names
                header = reader.fieldnames or ()  # read with the first row
                on_bad(
                    DataError(
                        f"{where} (line {reader.line_num}): {len(header) + len(data[None])} "
                        f"cells, the header has {len(header)}. Fix: quote cells that hold commas"
                    )
                )
                continue
            yield Row(data, where)


def _parquet(path: Path, on_bad: OnBad) -> Iterator[Row]:
    import pyarrow.parquet as pq  # heavy; lazily

    # pyarrow keeps nested columns (a conversations list of structs) as Python lists and dicts.
    return (Row(data, f"{path} row {index}") for index, data in enumerate(pq.read_table(path).to_pylist()))


def _txt(path: Path, on_bad: OnBad) -> Iterator[Row]:
    """Plain text (pre-training corpora): one document per non-blank line, in a `text` column, as
    `datasets`' text loader reads it."""
    for index, (number, text) in enumerate(_lines(path, on_bad)):
        yield Row({"text": text}, f"{path}:{number} row {index}")


READERS: dict[str, Callable[[Path, OnBad], Iterator[Row]]] = {
    ".json": _json_array,
    ".jsonl": _jsonl,
    ".csv": _csv,
    ".parquet": _parquet,
    ".txt": _txt,
}


def iter_file(path: Path, on_bad: OnBad) -> Iterator[Row]:
    """Rows of one data file as they are read; unreadable rows go to on_bad (which raises or counts)."""
    try:
        yield from READERS[path.suffix](path, on_bad)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}). Fix: save it as UTF-8") from None


def read_file(path: Path, on_bad: OnBad) -> list[Row]:
    """Every row of one data file."""
    return list(iter_file(path, on_bad))
