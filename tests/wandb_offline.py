"""Read back what a W&B offline run recorded, from its ``run-<id>.wandb`` transaction log.

The file is a 7-byte header (":W&B", a 2-byte magic, a version byte) followed by a LevelDB-style
log: 32 KiB blocks of records, each with a 7-byte header (CRC32C, 2-byte little-endian length,
type: 1 full, 2 first, 3 middle, 4 last) and a ``wandb_internal_pb2.Record`` protobuf as data.
Used by the tests to prove what a run logged without any network.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

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
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + RECORD_HEADER])
        payload = data[position + RECORD_HEADER:position + RECORD_HEADER + length]
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
class OfflineRun:
    run_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    group: str = ""
    job_type: str = ""


def item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def finished_records(log: Path, wait_s: float) -> list[wandb_internal_pb2.Record]:
    """The log's records once its exit record is there: W&B's service process may still be
    writing the file for a moment after ``run.finish()`` returned (seen on a loaded machine)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = list(records(log))
        if any(r.WhichOneof("record_type") == "exit" for r in found) or \
                time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def read_offline_run(run_dir: Path, wait_s: float = 30.0) -> OfflineRun:
    """Config, summary and history of the offline run in ``run_dir`` (an offline-run-* folder)."""
    (log,) = run_dir.glob("run-*.wandb")
    run = OfflineRun()
    for record in finished_records(log, wait_s):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id
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
                run.summary[item_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({item_key(i): json.loads(i.value_json) for i in record.history.item})
    return run
