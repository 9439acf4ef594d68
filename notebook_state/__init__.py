"""The portable state of a notebook: capture inside the kernel, the signed checkpoint format, the stores,
leases and fencing.

Usable by any Jupyter kernel manager: it knows nothing of HTTP or of ``kernel_gateway``. A kernel manager
hands it a :class:`~notebook_state.types.KernelLink` (``ClientKernel`` adapts a plain ``jupyter_client``
client) and gets checkpoints after each cell and restores onto fresh kernels.
"""
