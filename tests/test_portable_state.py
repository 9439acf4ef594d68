"""notebook_state on its own: the README's example, run as written, against a real Redis and real kernels.

It also proves the package boundary: nothing in notebook_state imports kernel_gateway.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.redis_server import redis_server

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(
        r"<!-- portable-state-example -->\n```python\n(.*?)```\n<!-- /portable-state-example -->", text, re.S
    )
    assert found, "README.md lost its portable-state example"
    return found.group(1)


def test_readme_example_checkpoints_one_kernel_and_restores_another(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    with redis_server(tmp_path / "redis") as redis:
        env = {**os.environ, "REDIS_URL": redis.url, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
        )
        leftover = redis.client().keys("*")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("checkpoint: committed"), done.stdout
    assert "'x'" in lines[1] and "'label'" in lines[1], done.stdout
    assert lines[-1] == "doubled 20", done.stdout
    assert not [k for k in leftover if b"demo-" in k], leftover  # the example cleans up after itself


def test_notebook_state_imports_nothing_of_the_service() -> None:
    offenders = []
    for path in (ROOT / "notebook_state").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in ("kernel_gateway", "loadtests", "fastapi", "starlette", "httpx"):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []
