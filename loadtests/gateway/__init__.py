"""The gateway benchmark (``skg-bench``, ``python -m loadtests.bench_gateway``): what the service costs per cell
at the kernel's own speed, beside raw jupyter_client and jupyter-kernel-gateway 3.0 measured in the same run.

One run starts everything it measures, on 127.0.0.1 only, and stops all of it again (also on error). It reports,
each in a section of one JSON document (stdout, and ``loadtests/results/bench_gateway[-redis].json``):

- ``cpu_ms_per_execute``: CPU of the gateway process and of its kernels per warm ``1+1``, on the WebSocket and
  on REST, beside a raw jupyter_client kernel's and jupyter-kernel-gateway's (``latency``);
- ``latency_ms``: warm round trips, faces measured in alternating blocks (``latency``);
- ``throughput``: executes/s at 1 to 8 sessions, against raw jupyter_client and jupyter-kernel-gateway
  (``throughput``);
- ``memory``: PSS a live idle session adds, beside a jupyter-kernel-gateway kernel; PSS of evicted sessions
  (``memory``);
- ``new_session``, ``replica_cold_start``: first results with the pool warm, with it empty, and from exec of a
  fresh replica restoring from Redis (``coldstart``);
- ``targets``: issue 9's targets, each with measured, limit and pass (``targets``).

``--redis`` runs the services under test with a Redis of the run's own instead of the embedded store.
"""
