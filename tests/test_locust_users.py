"""The locust users against a real service: REST, SSE and Jupyter WebSocket users for a few seconds (bounded
users and time, loopback only), run by the real ``locust`` as a subprocess (never imported here: gevent).

The schedule turns every user off for a moment and on again, so the Jupyter user comes back to its kernel and
checks its variable. Also the users' pure parts, as data: arrival patterns, the cell mix, message folding, SSE.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from loadtests.users import arrivals, cells
from loadtests.users.protocol import CellOutcome, execute_request, parse_sse
from loadtests.users.settings import make_settings
from tests.conftest import TOKEN
from tests.service import Service

ROOT = Path(__file__).resolve().parent.parent
USERS = ROOT / "loadtests" / "users"
LOCUST = Path(sys.executable).parent / "locust"

pytestmark = pytest.mark.timeout(180)


def run_locust(tmp_path: Path, host: str, files: list[str], stages: list[arrivals.Stage]) -> tuple[Path, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKG_", "JUPYTER"))}
    env.update(
        SKG_LT_TOKEN=TOKEN,
        SKG_LT_THINK="0.3",
        SKG_LT_SEED="7",
        SKG_LT_STAGES=arrivals.to_json(stages),
        SKG_LT_SAMPLES=str(tmp_path / "samples.csv"),
        PYTHONPATH=str(ROOT),
    )
    cmd = [
        str(LOCUST),
        "-f",
        ",".join([*(str(USERS / f) for f in files), str(USERS / "shape.py")]),
        "--headless",
        "--host",
        host,
        "--csv",
        str(tmp_path / "run"),
        "--html",
        str(tmp_path / "run.html"),
        "--only-summary",
        "--stop-timeout",
        "5",
        "--exit-code-on-error",
        "0",
    ]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp_path, done.stdout + done.stderr


def test_rest_sse_and_websocket_users_fire_their_events(service: Service, tmp_path: Path) -> None:
    # 3 users (one per class) for 5 s, all off for 1.5 s, back for 3 s: the comeback checks state.
    stages = arrivals.from_json(json.dumps([[0, 5, 3, 50, "on"], [5, 1.5, 0, 50, "off"], [6.5, 3, 3, 50, "on"]]))
    out, log = run_locust(tmp_path, service.url, ["rest.py", "sse.py", "jupyter.py"], stages)

    with (out / "run_stats.csv").open() as f:
        stats = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    expected = {
        ("POST", "first result"),
        ("POST", "warm execute"),  # REST
        ("POST", "stream open"),
        ("SSE", "first output"),
        ("SSE", "stream reply"),  # SSE
        ("POST", "start kernel"),
        ("GET", "kernel lookup"),
        ("WS", "connect"),
        ("WS", "first result"),
        ("WS", "warm execute"),
        ("STATE", "state after idle"),  # Jupyter WebSocket, and its comeback
    }
    assert expected <= set(stats), (sorted(stats), log[-3000:])
    failures = {k: r["Failure Count"] for k, r in stats.items() if k[1] != "Aggregated" and r["Failure Count"] != "0"}
    assert not failures, (failures, (out / "run_failures.csv").read_text())
    assert int(stats[("WS", "warm execute")]["Request Count"]) >= 3
    assert int(stats[("POST", "warm execute")]["Request Count"]) >= 3
    assert "warm execute" in (out / "run.html").read_text()

    # The samples file has every event with its time, user and cell kind; the comeback kept the variable.
    with (out / "samples.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0][1:3] == ["RUN", "test start"]
    kinds = Counter(r[6] for r in rows if r[2] == "warm execute")
    assert set(kinds) <= {c.kind for c in cells.MIX} and len(kinds) >= 2
    comebacks = [r for r in rows if r[2] == "state after idle"]
    assert comebacks and all(r[4] == "1" for r in comebacks)
    starts = [float(r[0]) for r in rows]
    assert max(starts) - min(starts) < 60  # the schedule, not the timeout, ended the run


# The pure parts, as data.


def test_arrival_patterns() -> None:
    ramp = arrivals.make_ramp(4, 8.0)
    assert [s.users for s in ramp] == [1, 2, 3, 4] and ramp[-1].end == 8.0
    burst = arrivals.make_burst(2, 6, 3.0, 6.0)
    assert [(s.users, s.phase) for s in burst] == [(2, "before-burst"), (6, "burst")]
    study = arrivals.make_study(3, 9, 3.0, 10.0, 10.0, 5.0)
    windows = arrivals.phase_windows(study)
    assert windows["steady"] == (3.0, 13.0) and windows["burst"] == (13.0, 23.0) and windows["saturation"][1] == 28
    day = arrivals.make_daily(10, 2.0)
    assert len(day) == 24 and day[0].users == 0 and max(s.users for s in day) == 10
    assert all(s.users >= 1 for s, share in zip(day, arrivals.DAY, strict=True) if share > 0)
    assert arrivals.stage_at(day, 47.9) is day[-1] and arrivals.stage_at(day, 48.0) is None
    nights = arrivals.make_daily(10, 2.0, night_hour=0.5)  # the hours with nobody on, shorter
    assert [s.users for s in nights] == [s.users for s in day] and nights[-1].end == 14 * 2.0 + 10 * 0.5
    assert all(s.duration == (2.0 if s.users else 0.5) for s in nights)
    evening = arrivals.make_daily(4, 1.0, first_hour=22, hours=4)
    assert [s.users for s in evening] == [0, 0, 0, 0]
    assert arrivals.from_json(arrivals.to_json(study)) == study
    assert arrivals.shifted(ramp, 5.0)[0].start == 5.0
    for kind in ("steady", "ramp", "burst", "daily", "study"):
        assert arrivals.make_schedule(kind, 3, 24.0)[0].start == 0
    with pytest.raises(ValueError, match="unknown arrival pattern"):
        arrivals.make_schedule("sawtooth", 3, 10.0)


def test_cell_mix_and_state_check() -> None:
    rng = random.Random(1)
    picked = Counter(cells.pick(rng).kind for _ in range(900))
    assert set(picked) == {"trivial", "print", "pandas", "plot"}
    assert picked["trivial"] > picked["plot"]  # weights 4 : 1
    assert cells.state_kept("u3-abc\n", "u3-abc") and not cells.state_kept("SKG-STATE-LOST\n", "u3-abc")
    namespace: dict[str, object] = {}
    exec(cells.make_state_cell("u1-x'y"), namespace)
    assert namespace["skg_user_state"] == "u1-x'y"


def test_messages_fold_into_one_outcome() -> None:
    request = execute_request("print(1)")
    msg_id = request["header"]["msg_id"]

    def msg(channel: str, msg_type: str, content: dict[str, object], parent: str = msg_id) -> dict[str, object]:
        return {
            "channel": channel,
            "header": {"msg_type": msg_type},
            "parent_header": {"msg_id": parent},
            "content": content,
        }

    outcome = CellOutcome(msg_id)
    assert not outcome.feed(msg("iopub", "stream", {"name": "stdout", "text": "x"}, parent="other"))
    assert outcome.feed(msg("iopub", "stream", {"name": "stdout", "text": "1\n"}))  # the first output
    assert not outcome.feed(msg("iopub", "display_data", {"data": {}}))
    assert not outcome.done
    outcome.feed(msg("shell", "execute_reply", {"status": "error", "ename": "E", "evalue": "v"}))
    assert not outcome.done
    outcome.feed(msg("iopub", "status", {"execution_state": "idle"}))
    assert outcome.done and outcome.stdout == "1\n" and outcome.outputs == 2 and outcome.error == "E: v"


def test_sse_parsing() -> None:
    text = (
        'event: session\ndata: {"session": "s1"}\n\n: comment\n'
        'event: output\ndata: {"a":\ndata: 1}\n\nevent: reply\ndata: {}'
    )
    events = list(parse_sse(text.splitlines(keepends=True)))
    assert [(e.event, e.data) for e in events] == [("session", {"session": "s1"}), ("output", {"a": 1}), ("reply", {})]


def test_settings_from_environment() -> None:
    s = make_settings(
        {
            "SKG_LT_TOKEN": "t",
            "SKG_LT_TARGETS": '[{"url": "http://a/"}, {"url": "http://b", "token": "u"}]',
            "SKG_LT_HUB_STOP": "0",
            "SKG_LT_PEAK": "9",
        }
    )
    assert [(t.url, t.token) for t in s.targets] == [("http://a", "t"), ("http://b", "u")]
    assert s.hub_stop is False and s.peak == 9 and s.think == 2.0 and s.seed is None
    assert make_settings({}).targets == () and make_settings({}).hub_stop is True
