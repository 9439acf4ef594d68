# syntax=docker/dockerfile:1
# JupyterLab whose kernels run on a Serverless Kernel Gateway (no kernel runs in this container), with
# skg_jupyter's gateway classes, so that an idle tab lets the gateway scale to zero.
# Build from the repository root:
#   docker build -f docker/jupyterlab.Dockerfile -t REGISTRY/skg-jupyterlab:TAG .
# Run:
#   docker run --rm -p 8888:8888 -e SKG_GATEWAY_URL=https://skg-gateway.skg.example.com \
#     -e SKG_GATEWAY_TOKEN=... REGISTRY/skg-jupyterlab:TAG [extra jupyter lab arguments]
FROM python:3.11.13-slim-bookworm

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The user: uid 1000 / gid 100 (users), as in the Jupyter Docker Stacks and KubeSpawner's defaults.
RUN pip install --no-cache-dir "jupyterlab==4.6.6" "jupyterhub==6.1.1" "dumb-init==1.2.5.post1" \
    && useradd --no-log-init --uid 1000 --gid 100 --create-home --home-dir /home/jovyan --shell /bin/bash jovyan

COPY --chmod=0755 docker/start-jupyterlab.sh /usr/local/bin/start-jupyterlab.sh
# skg_jupyter (needs only jupyter_server): the idle-closing gateway socket and the cached kernel list that let
# an idle tab leave a scale-to-zero gateway alone; start-jupyterlab.sh selects its classes.
COPY skg_jupyter/ /usr/local/lib/python3.11/site-packages/skg_jupyter/
RUN python -c "import skg_jupyter"

ENV PORT=8888
WORKDIR /home/jovyan
USER 1000:100
EXPOSE 8888

# Arguments given to `docker run IMAGE ...` are passed on to `jupyter lab`.
ENTRYPOINT ["dumb-init", "--", "start-jupyterlab.sh"]
CMD []
