"""How a forked kernel adopts the IPython shell the zygote built (kernels/forkapp.py), in a process of its own (the
shell is a process-wide singleton): the kernel's own request gets it, made that kernel's; any later request gets
the same singleton; a request the zygote's shell does not fit, or a kernel of another command line, gets a shell
of its own."""

from __future__ import annotations

import json
import subprocess
import sys

ADOPT = """
import json, os
from ipykernel.compiler import XCachingCompiler
from ipykernel.kernelapp import IPKernelApp
from ipykernel.zmqshell import ZMQInteractiveShell
from kernel_gateway.kernels import forkapp
from kernel_gateway.kernels.launch import IPYKERNEL_ARGUMENTS

assert forkapp.prebuild_app(IPYKERNEL_ARGUMENTS) and forkapp.prebuild_shell()
app, built = IPKernelApp.instance(), ZMQInteractiveShell.instance()
assert "IPython.extensions.storemagic" in built.extension_manager.loaded  # IPython's default extension, once
os.environ.pop("PAGER", None)  # a kernel's environment is its own, not the zygote's
os.chdir("/")
ask = dict(profile_dir=app.profile_dir, user_module=None, user_ns=None, compiler_class=XCachingCompiler)
with forkapp._adopting(argv_fits=True):
    mine = ZMQInteractiveShell.instance(parent=app, kernel="the kernel", **ask)
    later = ZMQInteractiveShell.instance()
adopted = [mine is built, later is built, mine.kernel, mine.parent is app, os.environ.get("PAGER"), mine.user_ns["_dh"]]
with forkapp._adopting(argv_fits=True):
    other = ZMQInteractiveShell.instance(parent=app, kernel="another", **{**ask, "user_ns": {}})
with forkapp._adopting(argv_fits=False):  # the zygote's shell was built for another command line
    third = ZMQInteractiveShell.instance(parent=app, kernel="a third", **ask)
fresh = [other is not built, other.kernel, third is not other, third.kernel]
print(json.dumps([adopted, fresh, "instance" in vars(ZMQInteractiveShell)]))
"""


def test_the_kernels_request_adopts_the_zygotes_shell_and_a_request_it_does_not_fit_gets_its_own() -> None:
    out = subprocess.run([sys.executable, "-c", ADOPT], capture_output=True, text=True, timeout=120, check=True)
    adopted, fresh, patched = json.loads(out.stdout.strip().splitlines()[-1])
    assert adopted == [True, True, "the kernel", True, "cat", ["/"]]
    assert fresh == [True, "another", True, "a third"]
    assert not patched  # SingletonConfigurable's own instance() again once the kernel has initialised
