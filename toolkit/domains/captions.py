"""Captioned data in Hugging Face's folder convention, for every domain.

A captioned folder holds its data files (directly or in sub-folders) and one metadata file,
``metadata.jsonl`` (one JSON object a line) or ``metadata.csv`` (a header row), whose rows give
``file_name`` (the file's path relative to the folder, ``/``-separated) and ``text`` (its caption).
Other columns are attributes (e.g. ``digit``, ``weight``); they are read and returned as they are.

Rules, each broken one an error naming the line and the fix: one metadata file only; every row has
``file_name`` and a non-empty ``text`` (the empty prompt is the unconditional branch of guidance, so
an empty caption would silently teach it); every ``file_name`` exists, is a data file and is listed
once; every data file has a caption. A file may instead be listed in ``held_out.jsonl`` (same columns):
it is kept out of training and validation, for measuring prompts the model never saw in training
(held-out attribute combinations). ``paraphrases.jsonl`` (``text`` and attributes, no files) holds
wordings kept out of the captions; the toolkit does not read it, the prompt benchmark does.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
HELD_OUT_FILE = "held_out.jsonl"
PARAPHRASES_FILE = "paraphrases.jsonl"
REQUIRED_COLUMNS = ("file_name", "text")


def metadata_file(root: str | Path) -> Path | None:
    """The metadata file of ``root`` (None when the folder is not captioned)."""
    found = [Path(root) / name for name in METADATA_FILES if (Path(root) / name).is_file()]
    if len(found) > 1:
        raise ValueError(
            f"{root} holds both metadata.jsonl and metadata.csv; keep one of them (captions come from one file)"
        )
    return found[0] if found else None


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """The rows of a JSON-lines file with their line numbers; blank lines are skipped."""
    rows = []
    with Path(path).open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                message = f"{path} line {number} is not valid JSON ({error.msg}); write one JSON object a line"
                raise ValueError(message) from error
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path} line {number} is not a JSON object; write one object a line, e.g. "
                    '{"file_name": "a.png", "text": "a caption"}'
                )
            rows.append((number, row))
    return rows


def read_csv(path: str | Path) -> list[tuple[int, dict]]:
    """The rows of a CSV file with a header, each with the line it ends on."""
    with Path(path).open(encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} has no {' or '.join(repr(c) for c in missing)} column (its header: {reader.fieldnames}); "
                "the first row must name the columns, with file_name and text among them"
            )
        rows = []
        for row in reader:
            if None in row:
                raise ValueError(f"{path} line {reader.line_num} has more values than the header has columns")
            rows.append((reader.line_num, row))
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """One JSON object a line, keys in the given order, UTF-8."""
    with Path(path).open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_rows(root: Path, path: Path) -> dict[str, dict]:
    """Checked rows of a metadata or held-out file of ``root``, by ``file_name``."""
    rows = read_csv(path) if path.suffix == ".csv" else read_jsonl(path)
    by_name: dict[str, dict] = {}
    lines: dict[str, int] = {}
    for number, row in rows:
        where = f"{path.name} line {number}"
        for column in REQUIRED_COLUMNS:
            if column not in row:
                raise ValueError(f"{where} has no {column!r}; every row needs file_name and text")
        name, text = row["file_name"], row["text"]
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: file_name must be a non-empty path relative to {root}, got {name!r}")
        relative = PurePosixPath(name.strip().replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"{where}: file_name {name!r} must be a path inside {root}, relative to it")
        key = relative.as_posix()
        if not (root / key).is_file():
            raise ValueError(f"{where}: file_name {name!r} does not exist in {root}; fix the name or remove the row")
        if key in by_name:
            raise ValueError(
                f"{where}: file_name {name!r} is already captioned on line {lines[key]}; give each file one row"
            )
        if not isinstance(text, str):
            raise ValueError(f"{where}: text must be a string, got {text!r}")
        if not text.strip():
            raise ValueError(
                f"{where}: empty text for {name!r}; write a caption or remove the row and the file "
                "(the empty prompt is reserved for the unconditional branch)"
            )
        by_name[key], lines[key] = {**row, "file_name": key}, number
    return by_name


def read_captions(root: str | Path) -> dict[str, dict]:
    """The checked captions of ``root`` by relative file name: each row with ``text`` and its attribute
    columns. ValueError when the folder has no metadata file."""
    root = Path(root).expanduser()
    path = metadata_file(root)
    if path is None:
        raise ValueError(f"{root} has no metadata.jsonl or metadata.csv (rows of file_name and text)")
    return read_rows(root, path)


def read_held_out(root: str | Path) -> dict[str, dict]:
    """The rows of ``held_out.jsonl`` by relative file name ({} when there is none)."""
    root = Path(root).expanduser()
    path = root / HELD_OUT_FILE
    return read_rows(root, path) if path.is_file() else {}


def captions_of(
    root: str | Path,
    files: Sequence[Path],
    text_encoder: dict | None,
    domain: str,
    what: str,
    optional: bool = False,
) -> dict[Path, str] | None:
    """The caption of each data file of ``root`` to train on (held-out files are left out), or None
    for a folder without captions.

    A captioned folder needs a ``text_encoder`` and a ``text_encoder`` needs a captioned folder, unless
    ``optional`` (a shipped folder that also serves label training: there captions are used only with a
    text encoder). ``files`` are the folder's data files as the domain found them; ``domain`` names the
    domain in errors, ``what`` its files.
    """
    root = Path(root).expanduser()
    path = metadata_file(root)
    if path is None:
        if text_encoder is not None:
            raise ValueError(
                f"text_encoder is set but {root} has no captions; add metadata.jsonl or metadata.csv (file_name and "
                f"text for each file) or unset text_encoder to train without prompts"
            )
        return None
    if text_encoder is None:
        if optional:
            return None
        raise ValueError(
            f"{root} is captioned ({path.name}) but no text encoder is set; set text_encoder=wordllama, e.g. "
            f"experiment={domain}_prompts (or move {path.name} out of the folder to train without captions)"
        )
    captions, held_out = read_captions(root), read_held_out(root)
    both = sorted(captions.keys() & held_out.keys())
    if both:
        raise ValueError(f"{both[0]!r} is both captioned in {path.name} and held out in {HELD_OUT_FILE}; keep one row")
    by_name = {Path(file).relative_to(root).as_posix(): Path(file) for file in files}
    for name in (*captions, *held_out):
        if name not in by_name:
            raise ValueError(
                f"{name!r} (in the captions of {root}) is not one of the {what}; remove its row or the file's "
                "unsupported suffix"
            )
    uncaptioned = [name for name in by_name if name not in captions and name not in held_out]
    if uncaptioned:
        raise ValueError(
            f"{len(uncaptioned)} of the {what} in {root} have no caption, e.g. {uncaptioned[0]!r}; add a row for each "
            f"to {path.name} (file_name, text) or remove the file (or list it in {HELD_OUT_FILE} to keep it out of "
            "training)"
        )
    return {by_name[name]: row["text"] for name, row in captions.items()}
