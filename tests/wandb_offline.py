"""Read back what a W&B offline run recorded, from its ``run-<id>.wandb`` transaction log.

The file is a 7-byte header (":W&B", a 2-byte magic, a version byte) followed by a LevelDB-style
log: 32 KiB blocks of records, each with a 7-byte header (CRC32C, 2-byte little-endian length,
type: 1 full, 2 first, 3 middle, 4 last) and a ``wandb_internal_pb2.Record`` protobuf as data.
Used by the tests to prove what a run logged without any network: its config, summary (nested
values, such as a ``define_metric`` aggregate ``{"max": ..., "last": ...}`` or a table's
reference, as dicts), history, metric definitions, artifacts (name, type, aliases, metadata and
each file's digest and staged copy) and tables (``read_table``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

FILE_HEADER = 7
BLOCK = 32 * 1024
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    if not data:
        return  # created, nothing written yet
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, pending = FILE_HEADER, b""
    while position + RECORD_HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < RECORD_HEADER:  # the tail of a block is padding
            position += left_in_block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + RECORD_HEADER])
        payload = data[position + RECORD_HEADER : position + RECORD_HEADER + length]
        if len(payload) < length:
            return  # the writer is mid-record: the rest is not on disk yet
        position += RECORD_HEADER + length
        if kind == 0 and length == 0:
            break
        if kind in (FULL, FIRST):
            pending = payload
        else:
            pending += payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@dataclass
class OfflineArtifact:
    name: str
    type: str
    aliases: list[str]
    metadata: dict[str, Any]
    # path in the artifact -> its digest (base64 MD5), size and staged copy (local_path)
    files: dict[str, dict[str, Any]]


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    notes: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    group: str = ""
    job_type: str = ""
    # define_metric calls: metric name -> its summary aggregates ("max", "last", ...)
    metrics: dict[str, list[str]] = field(default_factory=dict)
    artifacts: list[OfflineArtifact] = field(default_factory=list)
    folder: Path | None = None  # the offline-run-* folder

    def artifact(self, name: str) -> OfflineArtifact:
        (found,) = [a for a in self.artifacts if a.name == name]
        return found


def item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def set_nested(target: dict[str, Any], item) -> None:
    """A summary item into ``target``: a nested key (["model/layers", "path"]) as nested dicts."""
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


def md5_base64(path: Path) -> str:
    """A file's digest as W&B artifact manifests write it."""
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def read_artifact(record) -> OfflineArtifact:
    return OfflineArtifact(
        name=record.name,
        type=record.type,
        aliases=list(record.aliases),
        metadata=json.loads(record.metadata) if record.metadata else {},
        files={
            entry.path: {"digest": entry.digest, "size": entry.size, "local_path": entry.local_path}
            for entry in record.manifest.contents
        },
    )


def finished_records(log: Path, wait_s: float) -> list[wandb_internal_pb2.Record]:
    """The log's records once its exit record is there: W&B's service process may still be
    writing the file for a moment after ``run.finish()`` returned (seen on a loaded machine)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            found = list(records(log))
        except DecodeError:
            # A record read while the service was still flushing it (seen once in CI: the
            # header of the last record on disk, its payload not yet whole). Read again.
            if time.monotonic() > deadline:
                raise
            found = []
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def read_offline_run(run_dir: Path, wait_s: float = 30.0) -> OfflineRun:
    """Config, summary and history of the offline run in ``run_dir`` (an offline-run-* folder)."""
    (log,) = run_dir.glob("run-*.wandb")
    run = OfflineRun(folder=run_dir)
    for record in finished_records(log, wait_s):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id
            run.name = record.run.display_name
            run.notes = record.run.notes
            run.tags = list(record.run.tags)
            run.group = record.run.run_group
            run.job_type = record.run.job_type
            for item in record.run.config.update:
                run.config[item_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[item_key(item)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                set_nested(run.summary, item)
        elif kind == "metric" and record.metric.name:  # not a glob ("*")
            run.metrics[record.metric.name] = [
                op
                for op in ("min", "max", "mean", "last", "first", "none")
                if getattr(record.metric.summary, op)
            ]
        elif kind == "artifact":
            run.artifacts.append(read_artifact(record.artifact))
        elif kind == "history":
            run.history.append({item_key(i): json.loads(i.value_json) for i in record.history.item})
    return run


def read_table(run: OfflineRun, key: str) -> list[dict[str, Any]]:
    """The rows of the ``wandb.Table`` logged under ``key`` (its latest), as dicts by column,
    from the table file the summary points to in the run's files folder."""
    reference = run.summary[key]
    assert reference["_type"] == "table-file", reference
    table = read_media(run, reference["path"])
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def read_media(run: OfflineRun, path: str) -> Any:
    """A JSON media file a logged value points to (``path`` relative to the run's files
    folder, as history and summary entries give it): a table, an image's boxes."""
    return json.loads((run.folder / "files" / path).read_text())
