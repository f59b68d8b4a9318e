"""Text sources and the train/eval split: deterministic, disjoint, fingerprinted, offline-safe."""

from __future__ import annotations

import json
import time

import pytest

from saerun import data
from saerun.errors import SaerunError
from saerun.spec import DataConfig


def test_embedded_split_is_deterministic_and_disjoint():
    cfg = DataConfig()
    train = list(data.iter_documents(cfg, "train"))
    held = list(data.iter_documents(cfg, "eval"))
    assert train == list(data.iter_documents(cfg, "train"))
    assert not set(train) & set(held)
    assert 0.02 < len(held) / (len(train) + len(held)) < 0.10  # eval_fraction 0.05


def test_local_jsonl_and_txt(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"body": f"doc {i}"}) + "\n" for i in range(40)))
    cfg = DataConfig(dataset=str(path), text_column="body", eval_fraction=0.25)
    docs = list(data.iter_documents(cfg, "train")) + list(data.iter_documents(cfg, "eval"))
    assert sorted(docs) == sorted(f"doc {i}" for i in range(40))
    txt = tmp_path / "d.txt"
    txt.write_text("first paragraph\n\nsecond paragraph\n")
    cfg = DataConfig(dataset=str(txt), eval_fraction=0.01)
    assert list(data.iter_documents(cfg, "train")) == ["first paragraph", "second paragraph\n"]


def test_fingerprint_is_stable_and_sees_changes(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n")
    cfg = DataConfig(dataset=str(path))
    first = data.fingerprint(cfg)
    assert first == data.fingerprint(cfg)
    time.sleep(0.01)
    path.write_text(json.dumps({"text": "b"}) + "\n")
    assert data.fingerprint(cfg) != first
    assert data.fingerprint(DataConfig(dataset=str(path), text_column="x")) != first


def test_bad_sources_fail_fast_with_clear_errors(tmp_path):
    with pytest.raises(SaerunError, match="dataset file not found"):
        data.resolve_dataset(str(tmp_path / "missing.jsonl"))
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(SaerunError, match="text column 'text' not found.*available columns: body"):
        list(data.iter_documents(DataConfig(dataset=str(path)), "train"))
    t0 = time.perf_counter()
    with pytest.raises(SaerunError, match="not available offline.*saerun/stdlib"):
        data.resolve_dataset("NeelNanda/pile-10k")
    assert time.perf_counter() - t0 < 3
