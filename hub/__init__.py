"""The JupyterHub side: KnativeSpawner, RBAC, Zero-to-JupyterHub values, and a local hub for one machine."""
