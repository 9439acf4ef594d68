"""Process state across replicas: notebooks per category run with ``kill -9`` of the owner between cells, and
compared output by output with the same cells in one uninterrupted kernel.

One redis-server and three service processes serve every notebook, in lockstep: the uninterrupted reference
runs of all notebooks on B while their moved twins run their first part on A; A is killed; the twins go on
on B (restored there); a fresh A' starts and B is killed; the twins end on A' (restored again).
"""

from __future__ import annotations

import json
import signal
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.redis_server import redis_server
from tests.service import Service
from tests.test_replicas import run, start_replica


@dataclass
class Notebook:
    name: str
    parts: list[list[str]]  # cells before the first kill, between the kills, after the second
    lost: set[str] = field(default_factory=set)  # process-state hooks named as lost by the first restore


LIBRARIES = Notebook(
    "libraries",
    [
        [
            "import random, numpy as np\nrandom.seed(1)\nnp.random.seed(2)\n(random.random(), float(np.random.rand()))",
            # Both generators keep a cached normal for the next call: the cache must move too.
            "(random.gauss(0, 1), float(np.random.standard_normal()))",
            "import pandas as pd, warnings\npd.set_option('display.max_rows', 4)\n"
            "np.set_printoptions(precision=2)\nwarnings.filterwarnings('error', message='boom')\n"
            "from sklearn import set_config\nset_config(display='text')\nnp.array([1 / 3])",
        ],
        [
            "(random.gauss(0, 1), float(np.random.standard_normal()), random.random())",
            # Library code draws from numpy's global generator without the cell naming it.
            "from sklearn.utils import shuffle\nlist(shuffle(list(range(8))))",
            "import sklearn\n"
            "(pd.get_option('display.max_rows'), repr(np.array([1 / 3])), sklearn.get_config()['display'])",
        ],
        [
            "(random.randint(0, 10**9), int(np.random.randint(0, 10**9)))",
            "try:\n    warnings.warn('boom')\n    r = 'no error'\nexcept UserWarning:\n    r = 'raised'\nr",
        ],
    ],
)

PATHS = Notebook(
    "paths",
    [
        [
            "import os, sys\nos.makedirs('lib', exist_ok=True)\nos.makedirs('work', exist_ok=True)\n"
            "open('lib/nbmod.py', 'w').write('def f(v):\\n    return v * 7\\n')\n"
            "open('lib/nbmod2.py', 'w').write('G = 5\\n')\n"
            "sys.path.insert(0, os.path.abspath('lib'))\nimport nbmod\nos.chdir('work')\n"
            "%env NB_FLAG=on\nimport xml.dom.minidom\nnbmod.f(3)",
            # The module's file goes away (as on another machine): it comes back from the source kept of it.
            "os.remove('../lib/nbmod.py')\nos.path.basename(os.getcwd())",
        ],
        [
            "import nbmod2\n(nbmod.f(2), nbmod2.G, os.path.basename(os.getcwd()), os.environ['NB_FLAG'],"
            " xml.dom.minidom.parseString('<a>x</a>').documentElement.tagName)",
            "%cd -q ..\n%env NB_OTHER=1\nos.path.basename(os.getcwd())",
        ],
        ["(os.path.basename(os.getcwd()), os.environ.get('NB_OTHER'), nbmod.f(1), len(_dh))"],
    ],
)

MATPLOTLIB = Notebook(
    "matplotlib",
    [
        [
            "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.rcParams['lines.linewidth'] = 3\n"
            "fig, ax = plt.subplots(figsize=(2, 2))\nax.plot([1, 2, 3])\nplt.close(fig)",
            "%config InlineBackend.figure_formats = ['png', 'svg']\nplt.rcParams['lines.linewidth']",
        ],
        [
            "display(fig)\nplt.rcParams['lines.linewidth']",
            "fig2, ax2 = plt.subplots(figsize=(2, 2))\nax2.plot([3, 2, 1]);",
        ],
        ["display(fig2)\n(plt.get_backend(), plt.rcParams['lines.linewidth'])"],
    ],
)

IPYTHON = Notebook(
    "ipython",
    [
        [
            "a = 20\na + 1",
            "import numpy as np\nnp.zeros(100_000)",  # Out[3]: 780 KiB held by no variable, not kept
            "'text'",
            "%load_ext autoreload\n%autoreload 2\n%precision 3\n"
            "from IPython.core.magic import register_line_magic\n"
            "@register_line_magic\ndef shout(line):\n    return line.upper() + '!'\n"
            "class Point:\n    def __init__(self, x):\n        self.x = x\n"
            "    def __repr__(self):\n        return 'P'\n"
            "html = get_ipython().display_formatter.formatters['text/html']\n"
            "html.for_type(Point, lambda p: f'<b>{p.x}</b>')\n3.14159265",
            "%config PlainTextFormatter.max_seq_length = 3\nimport threading\n"
            "def worker():\n    threading.Event().wait(600)\n"
            "threading.Thread(target=worker, name='nb-worker', daemon=True).start()\nlist(range(10))",
        ],
        [
            "(_, ___, Out[2], In[2].strip(), _i3.splitlines()[0], len(In))",
            "%shout hi",
            "display(Point(4))\n3.14159265",
        ],
        [
            "reloader = get_ipython().magics_manager.registry['AutoreloadMagics']._reloader\n"
            "('autoreload' in get_ipython().extension_manager.loaded, reloader.enabled, list(range(10)))",
            "(Out[2], Out[4], _ii, _iii, In[7][:2])",
        ],
    ],
    lost={"threads", "history.out"},
)

CORPUS = [LIBRARIES, PATHS, MATPLOTLIB, IPYTHON]


def outputs(reply: dict[str, Any]) -> list[Any]:
    """What a frontend shows of a cell, images reduced to their MIME types (their bytes carry metadata)."""
    assert reply["status"] == "ok", json.dumps(reply)[:3000]
    shown: list[Any] = []
    for out in reply["outputs"]:
        kind = out["output_type"]
        if kind == "stream":
            shown.append((kind, out["name"], out["text"]))
        elif kind in ("execute_result", "display_data"):
            shown.append((kind, sorted(out["data"]), out["data"].get("text/plain"), out["data"].get("text/html")))
        else:
            shown.append((kind, out.get("ename"), out.get("evalue")))
    return shown


@dataclass
class Run:
    notebook: Notebook
    directory: Path
    session: str = ""
    shown: list[Any] = field(default_factory=list)
    restores: list[dict[str, Any]] = field(default_factory=list)

    def cell(self, svc: Service, code: str) -> None:
        reply = run(svc, code, self.session or None, timeout=120)
        self.session = reply["session"]
        assert reply["checkpoint"]["status"] == "committed", reply["checkpoint"]
        if reply.get("restored"):
            self.restores.append(reply["restored"])
        self.shown.append(outputs(reply))

    def start(self, svc: Service) -> None:
        self.directory.mkdir(parents=True)
        # A directory of its own on the volume every replica's kernels see (as a user's PVC): files it writes
        # stay apart from the other run's; the same execution counts in both runs.
        reply = run(svc, f"import os\nos.chdir({str(self.directory)!r})", timeout=120)
        assert reply["status"] == "ok", reply
        self.session = reply["session"]


def test_process_state_survives_kill_9_between_cells(tmp_path: Path) -> None:
    shared = tmp_path / "volume"  # bound into every kernel's sandbox, whose own /tmp is private
    reference = [Run(nb, shared / "reference" / nb.name / "nb") for nb in CORPUS]
    moved = [Run(nb, shared / "moved" / nb.name / "nb") for nb in CORPUS]
    shared.mkdir()
    # A kill -9 is noticed by the refused connection, not by the lease running out: a long lease keeps a replica
    # that a busy machine starves for a few seconds from giving its sessions up.
    volume = ("--sandbox-bind", str(shared), "--lease-ttl", "30")
    with redis_server(tmp_path / "redis") as srv, ExitStack() as stack:
        a = start_replica(tmp_path, srv, "a", *volume)
        stack.callback(a.stop, signal.SIGKILL, 20)
        b = start_replica(tmp_path, srv, "b", *volume)
        stack.callback(b.stop, signal.SIGKILL, 20)
        for ref, twin in zip(reference, moved, strict=True):
            ref.start(b)
            for code in (c for part in ref.notebook.parts for c in part):
                ref.cell(b, code)
            twin.start(a)
            for code in twin.notebook.parts[0]:
                twin.cell(a, code)
        a.proc.kill()
        a.proc.wait(10)
        for twin in moved:
            for code in twin.notebook.parts[1]:
                twin.cell(b, code)
        a2 = start_replica(tmp_path, srv, "a2", *volume)
        stack.callback(a2.stop, signal.SIGKILL, 20)
        b.proc.kill()
        b.proc.wait(10)
        for twin in moved:
            for code in twin.notebook.parts[2]:
                twin.cell(a2, code)
    for ref, twin in zip(reference, moved, strict=True):
        name = ref.notebook.name
        assert len(twin.restores) == 2, name  # restored on B, then on A'
        for cell, (want, got) in enumerate(zip(ref.shown, twin.shown, strict=True)):
            assert got == want, f"{name}, cell {cell}: {got} != {want}"
        first, second = twin.restores
        assert first["lost"] == second["lost"] == {}, (name, first, second)
        # What cannot move is named by the restore where it stayed behind, and is not there to name after.
        assert set(first["process"]["lost"]) == ref.notebook.lost, (name, first["process"])
        assert second["process"]["lost"] == {}, (name, second["process"])
    ipython = moved[CORPUS.index(IPYTHON)].restores[0]["process"]
    assert "nb-worker" in ipython["lost"]["threads"]
    assert {"ipython.extensions", "ipython.magics", "ipython.formatters", "ipython.config"} <= set(ipython["restored"])
    history = ipython["lost"]["history.out"]
    assert "Out[3]" in history and "held by no variable" in history
