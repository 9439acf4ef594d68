"""notebook_state.capture: checkpoint/restore of a notebook namespace, driven through real IPython shells.

Most tests run cells in an in-process ``InteractiveShell`` and restore into a fresh instance; one test goes through
real ipykernel processes with silent executes, as the service does.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from IPython.core.interactiveshell import InteractiveShell

from notebook_state import capture

pytest.importorskip("pandas")
pytest.importorskip("sklearn")


class Notebook:
    """An in-process shell with the tracker installed, and a fake store of the blobs it checkpointed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shell = InteractiveShell.instance()
        capture.install(self.shell)
        self.blobs: dict[str, Path] = {}
        self.count = 0

    @property
    def ns(self) -> dict[str, Any]:
        ns: dict[str, Any] = self.shell.user_ns
        return ns

    def run(self, code: str) -> None:
        result = self.shell.run_cell(textwrap.dedent(code), store_history=True)
        assert result.success, result.error_in_exec or result.error_before_exec

    def checkpoint(self) -> dict[str, Any]:
        self.count += 1
        out = self.root / f"cp{self.count}"
        out.mkdir()
        capture.checkpoint(str(out), self.shell)
        manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
        for gid, group in manifest["groups"].items():
            blob = out / f"{gid}.bin"
            assert blob.exists() == group["written"], gid
            if group["written"]:
                assert xxhash.xxh3_128_hexdigest(blob.read_bytes()) == group["hash"]
                assert blob.stat().st_size == group["size"]
                self.blobs[gid] = blob
        assert manifest["errors"] == []
        self.last = out
        return manifest

    def restore_dir(self) -> Path:
        """What the service hands a fresh kernel: the last manifest and every blob it lists."""
        target = self.root / f"restore{self.count}"
        target.mkdir()
        manifest = json.loads((self.last / "manifest.json").read_text())
        shutil.copy(self.last / "manifest.json", target)
        for gid in manifest["groups"]:
            shutil.copy(self.blobs[gid], target / f"{gid}.bin")
        return target


@pytest.fixture
def fresh_shell() -> Iterator[None]:
    main = sys.modules["__main__"]
    InteractiveShell.clear_instance()
    yield
    InteractiveShell.clear_instance()
    sys.modules["__main__"] = main


def restore_fresh(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore into a brand-new shell; returns (its user namespace, the report)."""
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    capture.restore(str(directory), shell)
    return shell.user_ns, json.loads((directory / "report.json").read_text())


def group_of(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [g for g in manifest["groups"].values() if name in g["names"]]
    assert len(matches) == 1, (name, manifest["groups"])
    return matches[0]


def test_corpus_round_trip(tmp_path: Path, fresh_shell: None) -> None:
    nb = Notebook(tmp_path)
    text = tmp_path / "data.txt"
    text.write_text("first\nsecond\n")
    before = {n for n in nb.ns if nb.shell.user_ns_hidden.get(n, object()) is not nb.ns[n] and n[0] != "_"}
    assert before == set()  # install added no user variables
    nb.run(
        """
        import numpy as np, pandas as pd
        import os.path as osp
        from sklearn.linear_model import LogisticRegression
        arr = np.arange(12.0).reshape(3, 4)
        df = pd.DataFrame({"a": np.arange(100.0), "b": np.arange(100) % 7})
        col = df["a"]
        head = df.iloc[:10]
        """
    )
    nb.checkpoint()
    nb.run(
        """
        X = np.random.default_rng(0).normal(size=(60, 3))
        y = (X[:, 0] + X[:, 1] > 0).astype(int)
        model = LogisticRegression().fit(X, y)
        expected = model.predict_proba(X)
        a = [1]; b = {"k": a}; c = a
        shared = {"v": 1}; l1 = [shared]; l2 = [shared]
        square = lambda v: v * v
        def scale(v):
            return v * factor
        factor = 3
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
        box = [0]
        getter = (lambda l: (lambda: l))(box)
        """
    )
    nb.checkpoint()
    nb.run(
        f"""
        import random, threading, sqlite3
        random.seed(7)
        rstate = random.getstate()
        rng = np.random.default_rng(42)
        rng.random()
        lock = threading.Lock()
        held = threading.Lock(); held.acquire()
        conn = sqlite3.connect(":memory:")
        fr = open({str(text)!r})
        fr.readline()
        fw = open({str(tmp_path / "out.txt")!r}, "w")
        gen = (i * i for i in range(5))
        next(gen)
        """
    )
    manifest = nb.checkpoint()
    assert manifest["execution_count"] == 3
    assert manifest["modules"] == {
        "np": "numpy",
        "pd": "pandas",
        "osp": "posixpath",
        "random": "random",
        "threading": "threading",
        "sqlite3": "sqlite3",
    }
    assert set(manifest["replay"]) == {"conn", "fr", "gen"}
    assert "position was reset" in manifest["replay"]["gen"]["reason"]
    assert manifest["replay"]["gen"]["kind"] == "generator"
    assert set(manifest["lost"]) == {"fw"}
    assert "cannot pickle open file" in manifest["lost"]["fw"]
    assert group_of(manifest, "a")["names"] == ["a", "b", "c"]
    assert group_of(manifest, "l1")["names"] == ["l1", "l2", "shared"]
    assert set(group_of(manifest, "df")["names"]) >= {"col", "df", "head"}
    expected_next = nb.shell.run_cell("rng.random()").result  # what the restored rng must draw next

    ns, report = restore_fresh(nb.restore_dir())
    assert set(report["lost"]) == {"fw"}
    assert sorted(report["replayed"]) == ["conn", "fr", "gen"]
    assert sorted(report["modules"]) == sorted(manifest["modules"])
    assert report["execution_count"] == 3
    names = {n for g in manifest["groups"].values() for n in g["names"]}
    assert set(report["restored"]) == names
    import os.path

    import numpy as np

    np.testing.assert_array_equal(ns["arr"], np.arange(12.0).reshape(3, 4))
    assert ns["arr"].flags.writeable
    assert ns["df"]["a"].sum() == sum(range(100)) and list(ns["head"]["b"]) == [i % 7 for i in range(10)]
    assert ns["col"].equals(ns["df"]["a"])
    np.testing.assert_allclose(ns["model"].predict_proba(ns["X"]), ns["expected"])
    assert ns["c"] is ns["a"] and ns["b"]["k"] is ns["a"]
    assert ns["l1"][0] is ns["l2"][0] is ns["shared"]
    assert ns["square"](7) == 49
    assert ns["scale"](2) == 6 and ns["scale"].__globals__ is ns
    ns["factor"] = 10
    assert ns["scale"](2) == 20  # functions read the live namespace, not a snapshot
    assert isinstance(ns["pt"], ns["Point"]) and ns["pt"].norm2() == 25
    assert ns["counter"]() == 2
    assert ns["getter"]() is ns["box"]
    assert ns["osp"] is os.path
    import random

    random.setstate(ns["rstate"])
    assert ns["rng"].random() == expected_next
    assert not ns["lock"].locked() and ns["held"].locked()
    assert ns["fr"].readline() == "first\n"
    assert next(ns["gen"]) == 0
    assert ns["conn"].execute("select 1").fetchone() == (1,)
    assert "fw" not in ns


def test_incremental_checkpoint_skips_untouched_dataframe(tmp_path: Path, fresh_shell: None) -> None:
    nb = Notebook(tmp_path)
    nb.run(
        """
        import numpy as np, pandas as pd
        df = pd.DataFrame(np.random.default_rng(1).random((655_360, 4)), columns=list("abcd"))  # 20 MB
        x = 0
        """
    )
    first = nb.checkpoint()
    assert group_of(first, "df")["size"] > 20_000_000
    nb.run("x = 1")
    manifest = nb.checkpoint()
    assert group_of(manifest, "df")["written"] is False
    assert group_of(manifest, "x")["written"] is True
    assert [g["names"] for g in manifest["groups"].values() if g["written"]] == [["x"]]
    assert manifest["stats"]["candidates"] == 1
    assert manifest["stats"]["hashed_bytes"] < 10_000
    assert manifest["stats"]["written_bytes"] < 10_000
    # A cell that reads df looks at it (hashes it) but does not write it again.
    nb.run("total = float(df['a'].sum())")
    manifest = nb.checkpoint()
    assert manifest["stats"]["hashed_bytes"] > 20_000_000
    assert group_of(manifest, "df")["written"] is False
    # A mutation through a method call is caught.
    nb.run("df.loc[0, 'a'] = -1.0")
    manifest = nb.checkpoint()
    assert group_of(manifest, "df")["written"] is True
    # After a restore the tracker starts from the manifest: the next cell writes only what it changes.
    ns, report = restore_fresh(nb.restore_dir())
    assert report["lost"] == {} and ns["df"].loc[0, "a"] == -1.0
    nb.shell = InteractiveShell.instance()
    nb.run("x = 2")
    manifest = nb.checkpoint()
    assert [g["names"] for g in manifest["groups"].values() if g["written"]] == [["x"]]
    assert manifest["execution_count"] == report["execution_count"] + 1


def test_deleted_variables_disappear_and_groups_split(tmp_path: Path, fresh_shell: None) -> None:
    nb = Notebook(tmp_path)
    nb.run("a = [1]; b = a; gone = 5; import os")
    manifest = nb.checkpoint()
    assert group_of(manifest, "a")["names"] == ["a", "b"]
    nb.run("del gone, os\nb = [2]")
    manifest = nb.checkpoint()
    names = [n for g in manifest["groups"].values() for n in g["names"]]
    assert sorted(names) == ["a", "b"] and "os" not in manifest["modules"]
    assert group_of(manifest, "a")["names"] == ["a"] and group_of(manifest, "b")["names"] == ["b"]
    nb.run("b.append(a)")  # merges the two groups again
    manifest = nb.checkpoint()
    assert group_of(manifest, "a")["names"] == ["a", "b"] and group_of(manifest, "a")["written"]
    ns, _ = restore_fresh(nb.restore_dir())
    assert ns["b"][1] is ns["a"] and "gone" not in ns and "os" not in ns


def test_reach_through_notebook_functions_and_dynamic_cells(tmp_path: Path, fresh_shell: None) -> None:
    nb = Notebook(tmp_path)
    nb.run(
        """
        data = []
        counter = 0
        unrelated = list(range(1000))
        def add(v):
            data.append(v)
            bump()
        def bump():
            global counter
            counter += 1
        """
    )
    nb.checkpoint()
    nb.run("add(3)")
    manifest = nb.checkpoint()
    written = {n for g in manifest["groups"].values() if g["written"] for n in g["names"]}
    assert written == {"data", "counter"}
    nb.run('exec("made = 1")')  # conservative: everything is a candidate, only changes are written
    manifest = nb.checkpoint()
    written = {n for g in manifest["groups"].values() if g["written"] for n in g["names"]}
    assert written == {"made"} and manifest["stats"]["candidates"] == 6
    nb.run("%xmode Plain")
    assert nb.checkpoint()["stats"]["candidates"] == 6
    ns, _ = restore_fresh(nb.restore_dir())
    assert ns["data"] == [3] and ns["counter"] == 1 and ns["made"] == 1


def test_replay_is_refused_when_unsafe(tmp_path: Path, fresh_shell: None) -> None:
    nb = Notebook(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("x")
    nb.run(
        f"""
        import os
        path = {str(victim)!r}
        def numbers():
            os.remove(path)
            yield 1
        risky = numbers()
        f = open(path)
        path = "elsewhere"
        g = (c for c in "abc")
        h = map(str.upper, g)
        """
    )
    manifest = nb.checkpoint()
    assert "os.remove" in manifest["lost"]["risky"] or "remove" in manifest["lost"]["risky"]
    assert "rebound after" in manifest["lost"]["f"]
    assert list(manifest["replay"]) == ["g", "h"]  # h is re-created after g, which it reads
    ns, report = restore_fresh(nb.restore_dir())
    assert set(report["lost"]) == {"risky", "f"} and report["replayed"] == ["g", "h"]
    assert list(ns["h"]) == ["A", "B", "C"]
    assert victim.exists()


def test_one_bad_group_does_not_stop_the_restore(tmp_path: Path, fresh_shell: None) -> None:
    nb = Notebook(tmp_path)
    nb.run("good = {'v': 1}\nbad = [1, 2]\nimport json as j\nimport os.path as missing_mod")
    manifest = nb.checkpoint()
    directory = nb.restore_dir()
    (directory / f"{group_id(manifest, 'bad')}.bin").write_bytes(b"garbage")
    manifest["modules"]["missing_mod"] = "no_such_module_xyz"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    ns, report = restore_fresh(directory)
    assert set(report["lost"]) == {"bad", "missing_mod"}
    assert "could not be loaded" in report["lost"]["bad"] and "no_such_module_xyz" in report["lost"]["missing_mod"]
    assert ns["good"] == {"v": 1} and report["modules"] == ["j"]


def test_dill_fallback_keeps_weakrefs_and_class_identity(tmp_path: Path, fresh_shell: None) -> None:
    nb = Notebook(tmp_path)
    nb.run(
        """
        import weakref
        class Node:
            def scaled(self):
                return self.v * factor
        factor = 2
        node = Node(); node.v = 3
        ref = weakref.ref(node)
        """
    )
    manifest = nb.checkpoint()
    assert group_of(manifest, "ref")["names"] == ["node", "ref"]
    assert group_of(manifest, "ref")["serializer"] == "dill"  # cloudpickle cannot pickle a weakref
    ns, report = restore_fresh(nb.restore_dir())
    assert report["lost"] == {} and ns["ref"]() is ns["node"] and type(ns["node"]) is ns["Node"]
    ns["factor"] = 10
    assert ns["node"].scaled() == 30


def group_id(manifest: dict[str, Any], name: str) -> str:
    return next(gid for gid, g in manifest["groups"].items() if name in g["names"])


async def test_through_real_ipykernel(tmp_path: Path) -> None:
    from jupyter_client.manager import AsyncKernelManager

    async def run(kc: Any, code: str, silent: bool = False) -> dict[str, Any]:
        reply = await kc.execute_interactive(code, silent=silent, store_history=not silent, timeout=60)
        content: dict[str, Any] = reply["content"]
        assert content["status"] == "ok", content
        return content

    async def start() -> tuple[Any, Any]:
        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        await run(kc, "__import__('notebook_state.capture').capture.install()", silent=True)
        return km, kc

    def call(fn: str, path: Path) -> str:
        return f"__import__('notebook_state.capture').capture.{fn}({str(path)!r})"

    km, kc = await start()
    km2 = kc2 = None
    try:
        await run(kc, "import numpy as np\narr = np.arange(5)\nitems = [arr, arr]\ngen = (i for i in range(3))")
        await run(kc, "total = int(arr.sum())")
        out = tmp_path / "cp"
        out.mkdir()
        await run(kc, call("checkpoint", out), silent=True)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["execution_count"] == 2
        assert group_of(manifest, "arr")["names"] == ["arr", "items"]
        assert list(manifest["replay"]) == ["gen"] and manifest["lost"] == {}
        reply = await run(kc, "print(sorted(k for k in globals() if not k.startswith('_')))")
        assert reply["execution_count"] == 3

        km2, kc2 = await start()
        await run(kc2, call("restore", out), silent=True)
        report = json.loads((out / "report.json").read_text())
        assert report["lost"] == {} and report["replayed"] == ["gen"] and report["execution_count"] == 2
        check = "assert items[0] is arr and total == 10 and list(gen) == [0, 1, 2] and np.__name__ == 'numpy'"
        reply = await run(kc2, check)
        assert reply["execution_count"] == 3
    finally:
        for client, manager in ((kc, km), (kc2, km2)):
            if client is not None and manager is not None:
                client.stop_channels()
                await manager.shutdown_kernel(now=True)


def test_numpy_views_stay_views(tmp_path: Path, fresh_shell: None) -> None:
    nb = Notebook(tmp_path)
    nb.run(
        """
        import numpy as np, pandas as pd
        a = np.arange(100.0)
        b = a[10:20]
        r = a[::-3]
        m = np.ones((5, 6))
        cols = m[:, :3]
        df = pd.DataFrame({"u": np.arange(50.0), "v": np.arange(50.0)})
        col = df["u"]
        """
    )
    nb.checkpoint()
    ns, report = restore_fresh(nb.restore_dir())
    assert report["lost"] == {}
    import numpy as np

    assert np.shares_memory(ns["a"], ns["b"]) and list(ns["b"]) == list(range(10, 20))
    assert np.shares_memory(ns["a"], ns["r"]) and list(ns["r"]) == list(np.arange(100.0)[::-3])
    assert np.shares_memory(ns["m"], ns["cols"]) and ns["cols"].shape == (5, 3)
    assert np.shares_memory(ns["df"]["u"].to_numpy(), ns["col"].to_numpy())
    ns["b"][0] = -1.0
    assert ns["a"][10] == -1.0  # a write through the view shows in the array, as before the restore
