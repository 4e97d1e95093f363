"""Append-only cache of LLM answers, so that a re-run or a crash costs no repeated generation.

An answer is keyed by sha256 of (model, template text, prompt, generation settings). Each process
appends to its own JSONL shard (``answers-<time>-<pid>.jsonl``) and flushes + fsyncs after every
batch; readers load all shards of the folder. A process killed mid-write leaves at most one
truncated last line, which readers skip (nobody appends after it), so every answer saved before
the kill is kept. Shards also let several workers (e.g. one per vLLM server) share one folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path


def cache_key(model: str, template: str, prompt: str, settings: dict) -> str:
    """sha256 of the four things an answer depends on."""
    blob = json.dumps([model, template, prompt, settings], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_shard(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and "key" in record and "answer" in record:
                records.append(record)
    return records


class GenerationCache:
    """Answers by key: ``{"key", "answer", "n_tokens"}`` records read from and appended to ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.records: dict[str, dict] = {}
        for shard in sorted(directory.glob("answers-*.jsonl")):
            for record in _read_shard(shard):
                self.records[record["key"]] = record
        self._shard = directory / f"answers-{time.time_ns()}-{os.getpid()}.jsonl"

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def append(self, records: list[dict]) -> None:
        """Write records durably (one line each, flushed and fsynced) before returning."""
        if not records:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self._shard, "a", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for record in records:
            self.records[record["key"]] = record
