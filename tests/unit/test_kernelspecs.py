"""The service's kernelspec lookup (kernels/launch.KernelSpecs): what jupyter_client finds, without importing
IPython into the service on a cold start's path to its first kernel."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = """
import json, sys
from jupyter_client.kernelspec import KernelSpecManager
from kernel_gateway.kernels.launch import KernelSpecs
ours = KernelSpecs()
spec, dirs = ours.get_kernel_spec("python3").to_dict(), ours.kernel_dirs
clean = not any(m.split(".")[0] in ("IPython", "ipykernel") for m in sys.modules)
theirs = KernelSpecManager()
print(json.dumps([clean, spec == theirs.get_kernel_spec("python3").to_dict(), dirs == theirs.kernel_dirs]))
"""


def test_the_kernelspec_is_jupyter_clients_without_ipython_in_the_service() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, True, True]


REPLICA = """
import json, sys, tempfile
from pathlib import Path
from kernel_gateway.replica import open_replica
from kernel_gateway.settings import Settings
manager = open_replica(Settings(data_dir=Path(tempfile.mkdtemp())), lambda: "http://127.0.0.1:1").manager
name = manager.check_kernel_name("python3")
print(json.dumps([name, sorted({m.split(".")[0] for m in sys.modules} & {"IPython", "ipykernel"})]))
"""


def test_a_replica_checks_its_kernel_name_without_ipython() -> None:
    # The app's start checks the default kernelspec (SessionManager.check_kernel_name) before it listens.
    out = subprocess.run([sys.executable, "-c", REPLICA], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["python3", []]
