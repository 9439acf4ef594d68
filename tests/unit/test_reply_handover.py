"""A small checkpoint travels in the cell's execute_reply: the kernel's outbox holds it, the service checks it
as strictly as hand-over files (``notebook_state.handover.read_reply``)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from notebook_state.capture.outbox import Outbox
from notebook_state.capture.serialize import load_bytes, serialize
from notebook_state.errors import CheckpointError
from notebook_state.handover import HandOverRejected, read_capture, read_reply


def manifest(*written: str) -> dict[str, Any]:
    return {"format": 1, "groups": {gid: {"names": [gid], "written": True} for gid in written}, "errors": []}


def test_small_blobs_stay_in_memory_and_come_back_verbatim(tmp_path: Path) -> None:
    out = Outbox(str(tmp_path / "auto"), limit=1024)
    ser = serialize({"x": [1, 2, 3]}, {})
    out.put("g1", ser)
    found = out.finish("manifest.json", manifest("g1"))
    assert found is not None and not (tmp_path / "auto").exists()
    got_manifest, blobs = read_reply(json.loads(json.dumps(found)))  # as it crosses the wire
    assert got_manifest == manifest("g1")
    assert load_bytes(bytearray(blobs["g1"]), {}) == {"x": [1, 2, 3]}


def test_the_blob_past_the_limit_spills_everything_to_files(tmp_path: Path) -> None:
    directory = tmp_path / "auto"
    out = Outbox(str(directory), limit=200)
    small, big = serialize({"x": 1}, {}), serialize({"y": "z" * 500}, {})
    out.put("g1", small)
    out.put("g2", big)
    assert out.finish("manifest.json", manifest("g1", "g2")) is None
    got_manifest, blobs = read_capture(directory)
    assert got_manifest == manifest("g1", "g2") and set(blobs) == {"g1", "g2"}
    assert load_bytes(bytearray(blobs["g2"]), {}) == {"y": "z" * 500}


def test_files_only_without_a_limit(tmp_path: Path) -> None:
    out = Outbox(str(tmp_path / "ckpt"))
    out.put("g1", serialize({"x": 1}, {}))
    assert out.finish("manifest.json", manifest("g1")) is None
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["g1.bin", "manifest.json"]


def test_the_kernels_errors_are_the_checkpoints_failure() -> None:
    found = Outbox("/nonexistent", limit=10).finish("errors.json", {"errors": ["checkpoint: boom"]})
    with pytest.raises(CheckpointError, match="boom"):
        read_reply(found)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("found", "why"),
    [
        ("not an object", "not an object"),
        ({"blobs": {}}, "no manifest"),
        ({"manifest": {"groups": []}, "blobs": {}}, "groups are not an object"),
        ({"manifest": manifest("g1"), "blobs": {}}, "not those its manifest says"),
        ({"manifest": manifest(), "blobs": {"g1": b64(b"x")}}, "not those its manifest says"),
        ({"manifest": manifest("../g"), "blobs": {"../g": b64(b"x")}}, "not allowed"),
        ({"manifest": manifest("g1"), "blobs": {"g1": 5}}, "not allowed"),
        ({"manifest": manifest("g1"), "blobs": {"g1": "**not base64**"}}, "not base64"),
    ],
)
def test_hostile_reply_checkpoints_are_refused(found: object, why: str) -> None:
    with pytest.raises(HandOverRejected, match=why):
        read_reply(found)


def test_a_reply_past_the_size_limit_is_refused() -> None:
    found = {"manifest": manifest("g1"), "blobs": {"g1": b64(b"x" * 4096)}}
    with pytest.raises(HandOverRejected, match="size limit"):
        read_reply(found, limit=1024)
    assert read_reply(found, limit=8192)[1]["g1"] == b"x" * 4096
