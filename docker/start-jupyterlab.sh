#!/usr/bin/env bash
# Start JupyterLab with its kernels on a Serverless Kernel Gateway.
#
# Environment:
#   SKG_GATEWAY_URL   (or JUPYTER_GATEWAY_URL)         the gateway's base URL, required,
#                                                      e.g. https://skg-gateway.skg.example.com
#   SKG_GATEWAY_TOKEN (or JUPYTER_GATEWAY_AUTH_TOKEN)  the gateway's SKG_TOKEN, sent as "Authorization: token ...";
#                                                      passed on in the environment (JUPYTER_GATEWAY_AUTH_TOKEN),
#                                                      never on the command line
#   PORT                                               port JupyterLab listens on (default 8888)
#   SKG_GATEWAY_REQUEST_TIMEOUT                        seconds a gateway request may take (default 120: a
#                                                      Knative cold start from zero adds seconds)
#   SKG_GATEWAY_IDLE_TIMEOUT                           seconds without kernel traffic before the gateway socket
#                                                      of a tab closes, so the gateway can scale to zero
#                                                      (default 120; 0: keep it open; skg_jupyter)
#   SKG_START_DRY_RUN=1                                print the command instead of running it
#   JUPYTERHUB_API_TOKEN                               set by JupyterHub: run jupyterhub-singleuser instead
# Arguments: --print-command (same as SKG_START_DRY_RUN=1); every other argument is passed to the server. A
# leading command (jupyterhub-singleuser, `jupyter lab`..., as Zero to JupyterHub's singleuser.cmd puts in
# front of the arguments) is dropped: this script chooses the command.
set -euo pipefail

prog="start-jupyterlab"
dry_run="${SKG_START_DRY_RUN:-0}"
passthrough=()
for arg in "$@"; do
  if [[ "$arg" == "--print-command" ]]; then
    dry_run=1
  else
    passthrough+=("$arg")
  fi
done
# KubeSpawner passes `cmd + args` as the container's arguments, after this script (the image's entrypoint).
if ((${#passthrough[@]} > 0)); then
  case "${passthrough[0]}" in
    jupyterhub-singleuser | jupyter-labhub | jupyter-lab | jupyter-server | start-jupyterlab.sh | */start-jupyterlab.sh)
      passthrough=("${passthrough[@]:1}")
      ;;
    jupyter)
      passthrough=("${passthrough[@]:1}")
      if ((${#passthrough[@]} > 0)) && [[ "${passthrough[0]}" =~ ^(lab|server|labhub)$ ]]; then
        passthrough=("${passthrough[@]:1}")
      fi
      ;;
  esac
fi

url="${SKG_GATEWAY_URL:-${JUPYTER_GATEWAY_URL:-}}"
token="${SKG_GATEWAY_TOKEN:-${JUPYTER_GATEWAY_AUTH_TOKEN:-}}"
port="${PORT:-8888}"
request_timeout="${SKG_GATEWAY_REQUEST_TIMEOUT:-120}"
idle_timeout="${SKG_GATEWAY_IDLE_TIMEOUT:-120}"

if [[ -z "$url" ]]; then
  echo "$prog: error: no gateway URL. Set SKG_GATEWAY_URL (or JUPYTER_GATEWAY_URL) to the Serverless" \
    "Kernel Gateway's address, e.g. SKG_GATEWAY_URL=https://skg-gateway.skg.example.com" >&2
  exit 2
fi
case "$url" in
  http://* | https://*) ;;
  *)
    echo "$prog: error: SKG_GATEWAY_URL must start with http:// or https://, got '$url'" >&2
    exit 2
    ;;
esac
url="${url%/}"
if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
  echo "$prog: error: PORT must be a port number (1-65535), got '$port'" >&2
  exit 2
fi
if ! [[ "$request_timeout" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
  echo "$prog: error: SKG_GATEWAY_REQUEST_TIMEOUT must be a number of seconds, got '$request_timeout'" >&2
  exit 2
fi
if ! [[ "$idle_timeout" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
  echo "$prog: error: SKG_GATEWAY_IDLE_TIMEOUT must be a number of seconds, got '$idle_timeout'" >&2
  exit 2
fi

sessions_db="${HOME:-/home/jovyan}/.local/share/jupyter/skg-sessions.db"

# Spawned by JupyterHub (KnativeSpawner, KubeSpawner): the hub-authenticated single-user server, same options.
if [[ -n "${JUPYTERHUB_API_TOKEN:-}" ]]; then
  launcher=(jupyterhub-singleuser)
else
  launcher=(jupyter lab)
fi
cmd=(
  "${launcher[@]}"
  --no-browser
  --ip=0.0.0.0
  "--port=${port}"
  "--gateway-url=${url}"
  "--GatewayClient.request_timeout=${request_timeout}"
  # An idle tab closes its gateway socket and answers JupyterLab's polls from memory (README.md,
  # "JupyterLab on a scale-to-zero gateway").
  --ServerApp.kernel_websocket_connection_class=skg_jupyter.IdleClosingGatewayWebSocketConnection
  --ServerApp.kernel_manager_class=skg_jupyter.CachingGatewayMappingKernelManager
  --ServerApp.kernel_spec_manager_class=skg_jupyter.CachingGatewayKernelSpecManager
  # Scaled to zero and started again, the server finds its notebooks' kernels (and their state) on the
  # gateway: sessions are kept on the user's volume, and kernels are not deleted when the server stops.
  --ServerApp.session_manager_class=skg_jupyter.AdoptingGatewaySessionManager
  "--SessionManager.database_filepath=${sessions_db}"
  "--IdleClosingGatewayWebSocketConnection.idle_timeout=${idle_timeout}"
)
if [[ -n "$token" ]]; then
  # GatewayClient reads it from the environment: it never shows in `ps`.
  export JUPYTER_GATEWAY_AUTH_TOKEN="$token"
else
  echo "$prog: warning: no gateway token (SKG_GATEWAY_TOKEN or JUPYTER_GATEWAY_AUTH_TOKEN): the gateway" \
    "refuses unauthenticated requests unless it is bound to loopback" >&2
fi
unset SKG_GATEWAY_TOKEN
cmd+=("${passthrough[@]+"${passthrough[@]}"}")

if [[ "$dry_run" == "1" ]]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
mkdir -p "$(dirname "$sessions_db")"
exec "${cmd[@]}"
