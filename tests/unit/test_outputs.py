"""Output collection, in-process: iopub messages to nbformat v4 outputs, as a notebook would keep them."""

from __future__ import annotations

from typing import Any

from kernel_gateway.sessions.outputs import TRUNCATION_MARKER, OutputCollector
from kernel_gateway.types import Channel, KernelMessage


def iopub(msg_type: str, **content: Any) -> KernelMessage:
    return KernelMessage(Channel.IOPUB, {"msg_id": "x", "msg_type": msg_type}, {}, {}, content)


def test_stream_text_of_one_name_merges_and_names_do_not_mix() -> None:
    c = OutputCollector(1000)
    c.add(iopub("stream", name="stdout", text="a"))
    c.add(iopub("stream", name="stdout", text="b"))
    c.add(iopub("stream", name="stderr", text="!"))
    c.add(iopub("stream", name="stdout", text="c"))
    assert [(o["name"], o["text"]) for o in c.outputs] == [("stdout", "ab"), ("stderr", "!"), ("stdout", "c")]


def test_rich_outputs_keep_their_nbformat_shape() -> None:
    c = OutputCollector(10_000)
    c.add(iopub("execute_result", execution_count=3, data={"text/plain": "2"}, metadata={}))
    c.add(iopub("display_data", data={"image/png": "iVBOR"}, metadata={"w": 1}))
    c.add(iopub("error", ename="ValueError", evalue="bad", traceback=["tb"]))
    c.add(iopub("status", execution_state="idle"))  # not an output
    assert [o["output_type"] for o in c.outputs] == ["execute_result", "display_data", "error"]
    assert c.outputs[0]["execution_count"] == 3 and c.outputs[2]["ename"] == "ValueError"


def test_clear_output_now_and_with_wait() -> None:
    c = OutputCollector(1000)
    c.add(iopub("stream", name="stdout", text="old"))
    c.add(iopub("clear_output", wait=False))
    assert c.outputs == []
    c.add(iopub("stream", name="stdout", text="kept until the next output"))
    c.add(iopub("clear_output", wait=True))
    assert len(c.outputs) == 1
    c.add(iopub("stream", name="stdout", text="new"))
    assert [o["text"] for o in c.outputs] == ["new"]


def test_update_display_data_replaces_the_output_with_that_display_id() -> None:
    c = OutputCollector(10_000)
    c.add(iopub("display_data", data={"text/plain": "0%"}, metadata={}, transient={"display_id": "p"}))
    c.add(iopub("stream", name="stdout", text="between"))
    streamed = c.add(
        iopub("update_display_data", data={"text/plain": "100%"}, metadata={}, transient={"display_id": "p"})
    )
    assert c.outputs[0]["data"] == {"text/plain": "100%"} and c.outputs[0]["output_type"] == "display_data"
    assert len(c.outputs) == 2
    assert streamed is not None and streamed["update"] is True


def test_output_over_the_limit_is_cut_with_a_marker_and_nothing_after_it() -> None:
    c = OutputCollector(10)
    c.add(iopub("stream", name="stdout", text="12345"))
    c.add(iopub("stream", name="stdout", text="6789abcdef"))
    c.add(iopub("stream", name="stdout", text="more"))
    assert c.truncated
    text = "".join(o["text"] for o in c.outputs if o["name"] == "stdout")
    assert text == "123456789a"
    assert c.outputs[-1]["text"] == TRUNCATION_MARKER.format(limit=10)
