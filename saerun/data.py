"""Text sources and the deterministic train/eval split (no model, no transformer-lens here).

A dataset is the embedded corpus ``saerun/stdlib``, a local ``.txt``/``.jsonl``/``.parquet`` file,
or a Hugging Face dataset name. Every source becomes a stream of documents in a stable order:
strings, or lists of token ids when the rows have an ``input_ids`` column (a pretokenized
dataset, as SAELens writes them: read as it is, never retokenized). A document belongs to the
eval split iff a hash of its content falls below ``eval_fraction``, so the split never depends
on batch size, seeds or the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from saerun.errors import SaerunError
from saerun.spec import DataConfig

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
EMBEDDED_DATASETS: dict[str, Path] = {"saerun/stdlib": EMBEDDED_DIR / "corpus" / "stdlib.jsonl"}
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
OFFLINE_HINT = "use the embedded default 'saerun/stdlib' or a local .txt/.jsonl/.parquet file"
IDS_COLUMN = "input_ids"  # a row with this column is pretokenized
Document = str | list[int]


@dataclass(frozen=True)
class DatasetRef:
    kind: Literal["embedded", "file", "hub"]
    name: str  # what the spec said
    path: Path | None = None  # embedded and file kinds


def _looks_local(dataset: str) -> bool:
    # Hub names are "owner/name" (one slash, no suffix); anything else path-like is a file the
    # user meant, and a typo in it must say "not found", not try the network.
    return (
        dataset.endswith(FILE_SUFFIXES)
        or dataset.startswith((".", "/", "~"))
        or "\\" in dataset
        or dataset.count("/") > 1
    )


def _hub_dataset_cached(name: str) -> bool:
    from huggingface_hub import constants

    try:
        return (Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}").is_dir()
    except OSError:  # a folder name too long (hub names have at most 96 characters): not cached
        return False


@lru_cache(maxsize=1)
def hub_unreachable_reason() -> str | None:
    """Why the hub cannot be used right now (offline env or no route), or None; asked once."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
    except OSError:
        return "no network"
    return None


def resolve_dataset(dataset: str, need_hub: bool = True) -> DatasetRef:
    """Where the documents of `dataset` come from; fails fast (no network wait) when unusable.
    need_hub=False (planning): a hub name is taken as it is, neither looked up nor required to be
    reachable; the embedded corpus and local files are still checked."""
    if dataset in EMBEDDED_DATASETS:
        path = EMBEDDED_DATASETS[dataset]
        if not path.is_file():
            raise SaerunError(
                f"embedded corpus {path} is missing",
                hint="rebuild it with `python scripts/build_embedded.py`",
            )
        return DatasetRef("embedded", dataset, path)
    try:
        path = Path(dataset).expanduser()
        is_file, exists = path.is_file(), path.exists()
    except RuntimeError:  # "~someone/..." for a user this machine does not know: no such file
        path, is_file, exists = Path(dataset), False, False
    except OSError as err:  # a name too long to be a path, a folder we may not look into
        raise SaerunError(f"cannot look for dataset file {dataset!r}: {err.strerror}") from None
    if is_file:
        if not path.name.endswith(FILE_SUFFIXES):
            raise SaerunError(f"unsupported dataset file type: {dataset} (use {FILE_SUFFIXES})")
        return DatasetRef("file", dataset, path)
    if _looks_local(dataset) or exists:
        raise SaerunError(f"dataset file not found: {dataset}")
    if need_hub and not _hub_dataset_cached(dataset):
        reason = hub_unreachable_reason()
        if reason is not None:
            raise SaerunError(
                f"dataset '{dataset}' is not available offline ({reason} and not in the local "
                f"Hugging Face cache)",
                hint=OFFLINE_HINT,
            )
    return DatasetRef("hub", dataset)


# ---------------------------------------------------------------------------------------------
# Reading documents
# ---------------------------------------------------------------------------------------------


def _missing_column(data: DataConfig, columns: list[str]) -> SaerunError:
    return SaerunError(
        f"text column '{data.text_column}' not found in dataset {data.dataset}; "
        f"available columns: {', '.join(sorted(columns)) or '(none)'}"
    )


def _token_ids(value: object, where: str) -> list[int]:
    """A pretokenized row's ids, checked to be a list of non-negative integers (whether they
    fit the model's vocabulary is checked where the model is known: activations.py)."""
    if isinstance(value, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        return list(value)
    raise SaerunError(f"{where}: {IDS_COLUMN} must be a list of non-negative integer token ids")


def _document(record: dict, data: DataConfig, where: str) -> Document | None:
    """The document of one row: its token ids when it has them, else its text; None: neither."""
    if IDS_COLUMN in record:
        return _token_ids(record[IDS_COLUMN], where)
    if data.text_column in record:
        return str(record[data.text_column])
    return None


def _read_jsonl(path: Path, data: DataConfig) -> Iterator[Document]:
    # JSON lines is one json.loads per line: read directly, streaming, with no arrow cache.
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise SaerunError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            doc = _document(record, data, f"{path}:{lineno}") if isinstance(record, dict) \
                else None
            if doc is None:
                columns = list(record) if isinstance(record, dict) else []
                raise _missing_column(data, columns)
            yield doc


def _read_txt(path: Path) -> Iterator[str]:
    # A plain-text file holds documents separated by blank lines (paragraphs), so that a split
    # by document is meaningful; a file with no blank lines is one document per line.
    text = path.read_text(encoding="utf-8")
    sep = "\n\n" if "\n\n" in text else "\n"
    yield from text.split(sep)


def _read_with_datasets(data: DataConfig, ref: DatasetRef) -> Iterator[Document]:
    import datasets

    if ref.kind == "file":
        ds = datasets.load_dataset(
            "parquet", data_files=str(ref.path), split="train", streaming=True
        )
    else:
        ds = datasets.load_dataset(ref.name, split=data.split, streaming=True)
    columns = list(ds.column_names or (ds.features or {}).keys())
    if columns and data.text_column not in columns and IDS_COLUMN not in columns:
        raise _missing_column(data, columns)
    for index, record in enumerate(ds):
        doc = _document(record, data, f"{data.dataset} row {index}")
        if doc is None:
            raise _missing_column(data, list(record))
        yield doc


def _all_documents(data: DataConfig) -> Iterator[Document]:
    ref = resolve_dataset(data.dataset)
    path = ref.path  # set for the embedded and file kinds, None for the hub
    if path is not None and path.name.endswith(".jsonl"):
        return _read_jsonl(path, data)
    if path is not None and path.name.endswith(".txt"):
        return _read_txt(path)
    return _read_with_datasets(data, ref)


def in_eval_split(doc: Document, eval_fraction: float) -> bool:
    """Stable across machines and runs: blake2b of the text (of the ids, comma-separated, for a
    pretokenized row), read as a number in [0, 1). By content, not position, so duplicate
    documents never straddle the split (no leak)."""
    content = doc if isinstance(doc, str) else "ids:" + ",".join(map(str, doc))
    digest = hashlib.blake2b(content.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < eval_fraction


def iter_documents(data: DataConfig, split: Literal["train", "eval"]) -> Iterator[Document]:
    """The non-empty documents of one split, in source order."""
    want_eval = split == "eval"
    for doc in _all_documents(data):
        empty = not doc.strip() if isinstance(doc, str) else not doc
        if not empty and in_eval_split(doc, data.eval_fraction) == want_eval:
            yield doc


# ---------------------------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (cached while its mtime and size stay the same)."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    # Keyed by mtime and size so a run re-hashes a multi-GB file only when it changed.
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hub_revision(name: str) -> str:
    # The commit the local cache resolved `main` to, when there is one; else just the name.
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else "unknown-revision"


def fingerprint(data: DataConfig) -> str:
    """sha256 of what a run read: the source bytes (or hub revision) plus column and split.
    The bytes hold a pretokenized dataset's ids, so one id changed is another fingerprint."""
    ref = resolve_dataset(data.dataset)
    if ref.path is not None:
        source = "file:" + file_sha256(ref.path)
    else:
        source = f"hub:{ref.name}@{_hub_revision(ref.name)}"
    key = json.dumps([source, data.text_column, data.split, data.eval_fraction],
                     separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()
