"""The corpus of common notebook state, built on one replica, restored on another after ``kill -9``."""

from __future__ import annotations

from pathlib import Path

from tests.redis_server import redis_server
from tests.service import Service
from tests.test_replicas import replicas, run, value

CELLS = [
    """
import numpy as np, pandas as pd
import os.path as osp
from sklearn.linear_model import LogisticRegression
arr = np.arange(12.0).reshape(3, 4)
df = pd.DataFrame({"a": np.arange(100.0), "b": np.arange(100) % 7})
head = df.iloc[:10]
""",
    """
X = np.random.default_rng(0).normal(size=(60, 3))
y = (X[:, 0] + X[:, 1] > 0).astype(int)
model = LogisticRegression().fit(X, y)
expected = model.predict_proba(X)
a = [1]; b = {"k": a}; c = a
square = lambda v: v * v
factor = 3
def scale(v):
    return v * factor
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2
pt = Point(3, 4)
def make_counter():
    n = [0]
    def inc():
        n[0] += 1
        return n[0]
    return inc
counter = make_counter()
counter()
""",
    """
import random, threading, sqlite3
random.seed(7)
rstate = random.getstate()
rng = np.random.default_rng(42)
lock = threading.Lock()
conn = sqlite3.connect(":memory:")
fr = open(DATA)
gen = (i * i for i in range(5))
fw = open(OUT, "w")
next_draw = np.random.default_rng(42).random()
""",
]

CHECK = """(
    bool((arr == np.arange(12.0).reshape(3, 4)).all()),
    float(df["a"].sum()) == 4950.0 and list(head["b"]) == [i % 7 for i in range(10)],
    bool(np.allclose(model.predict_proba(X), expected)),
    c is a and b["k"] is a,
    square(7) == 49 and scale(2) == 6,
    isinstance(pt, Point) and pt.norm2() == 25,
    counter() == 2,
    osp.join("x", "y") == "x/y",
    rng.random() == next_draw,
    random.getstate() is not None and rstate[0] == 3,
    not lock.locked(),
    conn.execute("select 1").fetchone() == (1,),
    fr.readline() == "first\\n",
    next(gen) == 0,
    "fw" not in globals(),
)"""


def test_corpus_restores_on_another_replica_after_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("first\nsecond\n")
    # The cells read and write files here: bound into every kernel's sandbox, as a shared volume would be.
    bind = ("--sandbox-bind", str(tmp_path))
    with redis_server(tmp_path / "redis") as srv, replicas(tmp_path, srv, 2, *bind) as (a, b):
        check_corpus(a, b, data, tmp_path)


def check_corpus(a: Service, b: Service, data: Path, tmp_path: Path) -> None:
    sid = run(a, f"DATA = {str(data)!r}\nOUT = {str(tmp_path / 'out.txt')!r}")["session"]
    for cell in CELLS:
        reply = run(a, cell, sid)
        assert reply["status"] == "ok", reply
        assert reply["checkpoint"]["status"] == "committed"
    a.proc.kill()
    a.proc.wait(10)
    reply = run(b, CHECK, sid)
    assert reply["status"] == "ok", reply
    assert "".join(value(reply).split()) == "(" + ",".join(["True"] * 15) + ")"
    restored = reply["restored"]
    assert set(restored["lost"]) == {"fw"}
    assert "open file" in restored["lost"]["fw"]
    assert sorted(restored["replayed"]) == ["conn", "fr", "gen"]
    assert {"np", "pd", "osp", "random", "threading", "sqlite3"} <= set(restored["modules"])
    everything = set(restored["restored"]) | set(restored["replayed"]) | set(restored["modules"])
    assert {"arr", "df", "head", "model", "a", "b", "c", "Point", "pt", "counter", "rng", "lock"} <= everything
