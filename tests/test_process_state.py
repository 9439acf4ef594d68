"""The process-state hooks, one area at a time: cells run in an in-process IPython shell with the tracker, a
checkpoint is taken, and it is restored into a fresh Python process (a fresh kernel: its own generators,
sys.path, working directory, environment, IPython and library state). The next cell must give there what it
gives in the shell that never moved.
"""

from __future__ import annotations

import decimal
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sklearn
from IPython.core.interactiveshell import InteractiveShell

from notebook_state import capture
from notebook_state.capture import hooks

CLEAN_ENV = {**os.environ, "NB_GONE": "here"}  # a fresh kernel's environment (this one the notebooks change)

ELSEWHERE = """
import json, os, sys
import numpy, pandas  # the service's warm kernels have them imported
from IPython.core.interactiveshell import InteractiveShell
from notebook_state import capture
class Shell(InteractiveShell):
    def enable_gui(self, gui=None):  # as ipykernel's shell: 'inline' needs no event loop
        pass
shell = Shell.instance()
capture.install(shell)
capture.restore(sys.argv[1], shell)
with open(os.path.join(sys.argv[1], "report.json")) as f:
    report = json.load(f)
result = shell.run_cell(sys.argv[2], store_history=True)
error = result.error_in_exec or result.error_before_exec
print("RESULT " + json.dumps({"report": report, "error": repr(error) if error else None,
                              "result": shell.user_ns.get("RESULT")}, default=repr))
"""


class Shell(InteractiveShell):
    def enable_gui(self, gui: str | None = None) -> None:  # as ipykernel's shell: 'inline' needs no event loop
        pass


class Notebook:
    """The shell that never moves, its checkpoints, and restores of the last one elsewhere."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shell = Shell.instance()
        capture.install(self.shell)
        self.blobs: dict[str, Path] = {}
        self.count = 0
        self.last: Path | None = None

    def run(self, code: str) -> None:
        result = self.shell.run_cell(textwrap.dedent(code), store_history=True)
        assert result.success, result.error_in_exec or result.error_before_exec

    def checkpoint(self, full: bool = False) -> dict[str, Any]:
        self.count += 1
        out = self.root / f"cp{self.count}"
        out.mkdir()
        capture.checkpoint(str(out), self.shell, full=full)
        manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
        assert manifest["errors"] == []
        for gid, group in manifest["groups"].items():
            if group["written"]:
                self.blobs[gid] = out / f"{gid}.bin"
        self.last = out
        return manifest

    def here(self, check: str) -> Any:
        """The next cell in the shell that never moved: its ``RESULT``, as JSON would carry it."""
        self.run(check)
        return json.loads(json.dumps(self.shell.user_ns["RESULT"], default=repr))

    def elsewhere(self, check: str, cwd: Path) -> tuple[Any, dict[str, Any]]:
        """The last checkpoint restored in a fresh process, then ``check`` run there: its RESULT and report."""
        assert self.last is not None
        target = self.root / f"restore{self.count}"
        target.mkdir()
        manifest = json.loads((self.last / "manifest.json").read_text())
        shutil.copy(self.last / "manifest.json", target)
        for gid in manifest["groups"]:
            shutil.copy(self.blobs[gid], target / f"{gid}.bin")
        cwd.mkdir(exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-c", ELSEWHERE, str(target), textwrap.dedent(check)],
            capture_output=True,
            text=True,
            env=CLEAN_ENV,
            cwd=cwd,
            timeout=120,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line is not None, proc.stdout + proc.stderr
        found = json.loads(line[len("RESULT ") :])
        assert found["error"] is None, found
        return found["result"], found["report"]

    def compare(self, check: str) -> tuple[Any, dict[str, Any]]:
        """Restore elsewhere and run ``check`` there and here: the results must be equal."""
        there, report = self.elsewhere(check, self.root / "elsewhere")
        assert there == self.here(check), report
        return there, report


@pytest.fixture
def nb(tmp_path: Path) -> Iterator[Notebook]:
    """A fresh shell; the test process's own state (which the notebooks change) is put back after."""
    main = sys.modules["__main__"]
    cwd, env, path, filters = os.getcwd(), dict(os.environ), list(sys.path), list(warnings.filters)
    rng, np_rng, np_print, np_err = random.getstate(), np.random.get_state(), np.get_printoptions(), np.geterr()
    sk, ctx, added = sklearn.get_config(), decimal.getcontext().copy(), set(sys.modules)
    Shell.clear_instance()
    try:
        yield Notebook(tmp_path)
    finally:
        Shell.clear_instance()
        sys.modules["__main__"] = main
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.path[:] = path
        warnings.filters[:] = filters  # type: ignore[index]
        warnings._filters_mutated()  # type: ignore[attr-defined]
        random.setstate(rng)
        np.random.set_state(np_rng)
        np.set_printoptions(**np_print)
        np.seterr(**np_err)
        sklearn.set_config(**sk)
        decimal.setcontext(ctx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pd.reset_option("all")
        for name in [n for n in sys.modules if n not in added and n.startswith("nbhelper")]:
            del sys.modules[name]
        for hook in hooks.added_hooks():
            hooks.unregister(hook.name)


def process_groups(manifest: dict[str, Any]) -> dict[str, bool]:
    """{hook/part: written} of a manifest's process-state parts."""
    return {f"{g['process']}/{g['part']}": g["written"] for g in manifest["groups"].values() if "process" in g}


DRAWS = "RESULT = [random.gauss(0, 1), float(np.random.standard_normal()), random.random(), float(np.random.rand())]"


def test_random_generators_continue_where_they_were(nb: Notebook) -> None:
    nb.run("import random, numpy as np\nx = 1")
    assert not any(k.startswith(("random/", "numpy.random/")) for k in process_groups(nb.checkpoint()))
    # Odd counts of normal draws: both generators keep the second value of a pair for the next call.
    nb.run("random.seed(5)\nnp.random.seed(6)\nrandom.gauss(0, 1)\nnp.random.standard_normal()")
    written = process_groups(nb.checkpoint())
    assert written["random/"] and written["numpy.random/"]
    nb.run("y = 2")
    written = process_groups(nb.checkpoint())
    assert not written["random/"] and not written["numpy.random/"]  # untouched: not written again
    # Library code draws from numpy's global generator without the cell naming it.
    nb.run("from sklearn.utils import shuffle\norder = shuffle(list(range(5)))")
    written = process_groups(nb.checkpoint())
    assert written["numpy.random/"] and not written["random/"]
    _, report = nb.compare(DRAWS)
    assert {"random", "numpy.random"} <= set(report["process"]["restored"])


def test_numpy_cached_normal_moves_even_when_the_position_does_not(nb: Notebook) -> None:
    nb.run("import numpy as np\nnp.random.seed(1)\na = np.random.standard_normal()")
    nb.checkpoint()
    nb.run("b = np.random.standard_normal()")  # served from the cache: only the cached flag changes
    assert process_groups(nb.checkpoint())["numpy.random/"]
    nb.compare("RESULT = float(np.random.standard_normal())")


def test_paths_modules_working_directory_and_environment(nb: Notebook, tmp_path: Path) -> None:
    os.environ["NB_GONE"] = "here"  # in a fresh kernel's environment: the notebook removes it
    lib, work = tmp_path / "lib", tmp_path / "work"
    lib.mkdir()
    work.mkdir()
    (lib / "nbhelper.py").write_text("def twice(v):\n    return 2 * v\n")
    (lib / "nbhelper_two.py").write_text("G = 9\n")
    nb.run(
        f"import os, sys\nsys.path.insert(0, {str(lib)!r})\nimport nbhelper\nos.chdir({str(work)!r})\n"
        "%env NB_ONE=1\nos.environ.pop('NB_GONE', None)\nimport xml.dom.minidom"
    )
    nb.checkpoint()  # as the service does after each cell: the module's source is kept
    (lib / "nbhelper.py").unlink()  # as on a replica that does not have the file: the kept source is used
    nb.run("x = 1")
    nb.checkpoint()
    check = """
        import nbhelper_two
        doc = xml.dom.minidom.parseString('<a/>')
        RESULT = [nbhelper.twice(4), nbhelper_two.G, os.getcwd(), os.environ.get('NB_ONE'),
                  'NB_GONE' in os.environ, sys.path[0], doc.documentElement.tagName]
    """
    there, report = nb.compare(check)
    assert there[2] == str(work)
    assert {"cwd", "os.environ", "sys.path", "sys.modules"} <= set(report["process"]["restored"])
    assert report["process"]["lost"] == {}


def test_a_missing_working_directory_is_made_again_and_named(nb: Notebook, tmp_path: Path) -> None:
    gone = tmp_path / "scratch" / "here"
    gone.mkdir(parents=True)
    nb.run(f"import os\nos.chdir({str(gone)!r})\nopen('notes.txt', 'w').write('x')")
    nb.checkpoint()
    os.chdir(tmp_path)
    shutil.rmtree(tmp_path / "scratch")
    there, report = nb.elsewhere("RESULT = [os.getcwd(), os.listdir('.')]", tmp_path / "elsewhere")
    assert there == [str(gone), []]
    assert "created empty" in report["process"]["lost"]["cwd"]


def test_ipython_extensions_config_magics_and_formatters(nb: Notebook) -> None:
    nb.run("%load_ext autoreload\n%autoreload 2\n%precision 3\n%config InteractiveShell.ast_node_interactivity='last'")
    nb.run("""
        from IPython.core.magic import Magics, line_magic, magics_class, register_line_magic
        @register_line_magic
        def shout(line):
            return line.upper()
        @magics_class
        class Counting(Magics):
            @line_magic
            def count(self, line):
                return len(line.split())
        get_ipython().register_magics(Counting)
        get_ipython().run_line_magic('alias_magic', 'yell shout')
        class Point:
            def __init__(self, x):
                self.x = x
        formatters = get_ipython().display_formatter.formatters
        formatters['text/html'].for_type(Point, lambda p: f'<i>{p.x}</i>')
        formatters['text/plain'].for_type_by_name('decimal', 'Decimal', lambda d, p, cycle: p.text('D'))
    """)
    nb.checkpoint()
    check = """
        import decimal
        ip = get_ipython()
        fmt = ip.display_formatter
        RESULT = [ip.run_line_magic('shout', 'hi'), ip.run_line_magic('yell', 'yo'), ip.run_line_magic('count', 'a b'),
                  fmt.format(Point(2))[0].get('text/html'), fmt.format(3.14159)[0]['text/plain'],
                  ip.ast_node_interactivity, fmt.format(decimal.Decimal(1))[0]['text/plain'],
                  ip.magics_manager.registry['AutoreloadMagics']._reloader.enabled,
                  sorted(ip.extension_manager.loaded)]
    """
    there, report = nb.compare(check)
    assert there[:8] == ["HI", "YO", 2, "<i>2</i>", "3.142", "last", "D", True]
    restored = set(report["process"]["restored"])
    assert {"ipython.extensions", "ipython.config", "ipython.magics", "ipython.magic_lines"} <= restored
    assert "ipython.formatters" in restored


def test_matplotlib_inline_backend_formats_and_rcparams(nb: Notebook) -> None:
    nb.run("""
        %matplotlib inline
        import matplotlib.pyplot as plt
        plt.rcParams['lines.linewidth'] = 4
        %config InlineBackend.figure_formats = ['svg']
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([1, 2])
        plt.close(fig)
    """)
    nb.checkpoint()
    check = """
        import matplotlib
        from matplotlib_inline.backend_inline import flush_figures
        shown = get_ipython().display_formatter.format(fig)[0]
        RESULT = [sorted(shown), plt.rcParams['lines.linewidth'], matplotlib.get_backend(),
                  flush_figures in get_ipython().events.callbacks['post_execute']]
    """
    there, report = nb.compare(check)
    assert there == [["image/svg+xml", "text/plain"], 4.0, "inline", True]
    assert {"matplotlib.backend", "matplotlib.rcParams"} <= set(report["process"]["restored"])


def test_numpy_pandas_sklearn_options_and_warnings_filters(nb: Notebook) -> None:
    nb.run("""
        import numpy as np, pandas as pd, warnings
        from sklearn import set_config
        pd.set_option('display.max_rows', 7)
        pd.set_option('display.float_format', lambda v: f'{v:.1f}')
        np.set_printoptions(precision=2)
        np.seterr(divide='raise')
        warnings.filterwarnings('error', message='nb boom')
        set_config(display='text')
    """)
    nb.checkpoint()
    check = """
        import sklearn
        try:
            warnings.warn('nb boom')
            w = 'silent'
        except UserWarning:
            w = 'raised'
        try:
            np.array([1.0]) / 0
            d = 'silent'
        except FloatingPointError:
            d = 'raised'
        RESULT = [pd.get_option('display.max_rows'), pd.get_option('display.float_format')(1.25),
                  repr(np.array([1 / 3])), d, w, sklearn.get_config()['display']]
    """
    there, report = nb.compare(check)
    assert there == [7, "1.2", "array([0.33])", "raised", "raised", "text"]
    assert {"pandas.options", "numpy.options", "warnings.filters", "sklearn.config"} <= set(
        report["process"]["restored"]
    )


def test_in_out_and_underscore_names(nb: Notebook) -> None:
    nb.run("a = 1\na")
    nb.run("import numpy as np\nbig = np.arange(10**6)\nbig")  # 8 MB, but a variable: Out[2] is big
    nb.run("np.zeros(10**5)")  # 800 KB held by nothing else: not kept
    nb.run("'last'")
    nb.checkpoint()
    check = "RESULT = [In[1], Out[1], Out[2] is big, 3 in Out, _, ___ is big, _i1, _ii, len(In)]"
    there, report = nb.elsewhere(check, nb.root / "elsewhere")
    here = nb.here(check)
    assert there == [*here[:3], False, *here[4:]] and here[3] is True
    assert there[:3] == ["a = 1\na", 1, True]
    assert "Out[3]" in report["process"]["lost"]["history.out"]
    nb.run("big = None")  # Out[2] no longer is a variable: too big to keep on its own
    nb.checkpoint()
    _, report = nb.elsewhere("RESULT = 2 in Out", nb.root / "elsewhere2")
    assert "Out[2]" in report["process"]["lost"]["history.out"]


def test_a_long_history_is_a_few_parts_and_comes_back_whole(nb: Notebook) -> None:
    written: list[int] = []
    for i in range(150):
        nb.run(f"v{i % 3} = {i}\n{i} * 2" if i % 5 else f"w = {i}")  # 4 cells in 5 have an output
        manifest = nb.checkpoint()  # as the service does after every cell
        written.append(sum(process_groups(manifest).values()))
    parts = [k for k in process_groups(manifest) if k.startswith("history.")]
    assert len(parts) <= 16, parts  # a log of chunks, not one per 16 cells
    assert max(written) <= 4  # a cell writes its own chunk and, now and then, a merge
    nb.compare("RESULT = [len(In), In[77], Out[77], _, __, len(Out), sum(Out.values())]")


def test_only_what_changed_is_written(nb: Notebook) -> None:
    nb.run("import sys\nx = 1")
    nb.checkpoint()
    nb.run("x = 2")
    nb.checkpoint()  # the first checkpoints may see modules the capture itself imports
    nb.run("x = 3")
    manifest = nb.checkpoint()
    assert not any(process_groups(manifest).values())
    assert "tail" in manifest["process"]["inline"]["history.in"]  # the open end of In rides in the manifest
    nb.run("sys.path.append('/nb/extra')")
    assert [k for k, w in process_groups(nb.checkpoint()).items() if w] == ["sys.path/"]
    assert all(process_groups(nb.checkpoint(full=True)).values())


def test_cells_that_run_no_code_skip_the_fingerprints_only_when_nothing_could_move(nb: Notebook) -> None:
    nb.run("""
        import sys
        class Adder:
            def __add__(self, other):
                sys.path.append('/nb/operator')
                return other
        adder = Adder()
        x = 1
    """)
    nb.checkpoint()
    nb.run("x = x + 1")  # runs no code of its own: the history moves, nothing else is looked at
    assert [k for k, w in process_groups(nb.checkpoint()).items() if w] == []
    nb.run("y = adder + 1")  # no call in sight, but the operator is the notebook's own code
    assert process_groups(nb.checkpoint())["sys.path/"]
    nb.shell.run_cell("sys.path.append('/nb/silent')", silent=True)  # a frontend's silent execute
    nb.run("z = 1")
    assert process_groups(nb.checkpoint())["sys.path/"]
    nb.compare("RESULT = [p for p in sys.path if p.startswith('/nb/')]")


def test_a_hook_registered_by_the_notebook_comes_along(nb: Notebook) -> None:
    nb.run("""
        import decimal
        from notebook_state.capture.hooks import Hook, register
        def precision(ctx):
            return decimal.getcontext().prec
        def set_precision(state, ctx):
            decimal.getcontext().prec = state
        register(Hook('decimal.precision', fingerprint=precision, capture=precision, restore=set_precision))
        decimal.getcontext().prec = 5
    """)
    nb.checkpoint()
    there, report = nb.compare("RESULT = str(decimal.Decimal(1) / 7)")
    assert there == "0.14286"
    assert {"notebook_state.hooks", "decimal.precision"} <= set(report["process"]["restored"])


def test_what_cannot_come_back_is_named(nb: Notebook) -> None:
    stop = threading.Event()
    nb.shell.user_ns["stop"] = stop
    try:
        nb.run("""
            import threading
            def worker():
                stop.wait(120)
            threading.Thread(target=worker, name='nb-thread', daemon=True).start()
            class Point:
                pass
            def make():
                numbers = (i for i in range(3))  # a generator in a closure: cannot be pickled
                return lambda p: str(next(numbers))
            get_ipython().display_formatter.formatters['text/html'].for_type(Point, make())
            from notebook_state.capture.hooks import Hook, register
            def refuse(state, ctx):
                raise RuntimeError('not on this machine')
            register(Hook('refusing', fingerprint=lambda ctx: 1, capture=lambda ctx: 1, restore=refuse))
        """)
        nb.checkpoint()
        _, report = nb.elsewhere("RESULT = 1", nb.root / "elsewhere")
    finally:
        stop.set()
    lost = report["process"]["lost"]
    assert "nb-thread" in lost["threads"]
    assert "text/html" in lost["ipython.formatters"] and "not serialisable" in lost["ipython.formatters"]
    assert "not on this machine" in lost["refusing"]
