"""A JupyterHub on one machine whose user servers run their kernels on a local gateway."""
