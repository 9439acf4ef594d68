# syntax=docker/dockerfile:1
# Serverless Kernel Gateway: the service image (FastAPI/uvicorn + a warm pool of ipykernel processes).
# Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t REGISTRY/skg-gateway:TAG .
# Run (a non-loopback bind needs a token):
#   docker run --rm -p 8080:8080 -e SKG_TOKEN=... REGISTRY/skg-gateway:TAG
# The base image is pinned by tag; pin it by digest too (python:3.11.13-slim-bookworm@sha256:...) for
# reproducible builds, and bump both together.

# ---- builder: build the project's wheel and a self-contained virtualenv in /opt/venv ----
FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY kernel_gateway/ kernel_gateway/
COPY notebook_state/ notebook_state/

# The venv lives at the same path in the final stage, on the same Python, so it is copied as it is.
# ipykernel is a dependency; `ipykernel install --sys-prefix` writes the python3 kernelspec into the venv
# (share/jupyter/kernels/python3) so the gateway finds it without a home directory.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/*.whl "dumb-init==1.2.5.post1" \
    && /opt/venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" \
    && /opt/venv/bin/python -c "from jupyter_client.kernelspec import KernelSpecManager as M; assert 'python3' in M().find_kernel_specs()" \
    && /opt/venv/bin/skg --version

# ---- final: slim runtime, non-root ----
FROM python:3.11.13-slim-bookworm

# A fixed UID/GID, so Kubernetes can check runAsNonRoot and the manifests can name it (runAsUser: 10001).
ARG SKG_UID=10001
ARG SKG_GID=10001
RUN groupadd --system --gid "${SKG_GID}" skg \
    && useradd --system --no-log-init --uid "${SKG_UID}" --gid skg --create-home --home-dir /home/skg \
       --shell /usr/sbin/nologin skg

# bubblewrap: each kernel runs in a sandbox of its own. It needs user namespaces in the pod; where they are
# refused, the gateway says so at start and in /readyz (docs/security.md: what holds then).
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap=0.8.0-2+deb12u1 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/venv /opt/venv

# PORT: Knative sets it (8080); SKG_HOST: listen on all interfaces (requires SKG_TOKEN).
# SKG_DATA_DIR under /tmp: in Kubernetes the root filesystem is read-only and /tmp is an emptyDir.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    SKG_HOST=0.0.0.0 \
    SKG_DATA_DIR=/tmp/skg

WORKDIR /home/skg
USER 10001:10001
EXPOSE 8080

# dumb-init as PID 1 reaps orphaned processes of user code; --single-child passes SIGTERM to the gateway
# only, which then drains (SKG_SHUTDOWN_GRACE) and shuts its kernels down itself.
ENTRYPOINT ["dumb-init", "--single-child", "--"]
CMD ["skg", "serve"]
