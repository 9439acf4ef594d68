"""Serverless Kernel Gateway: Jupyter kernels over HTTP from stateless replicas."""

__version__ = "0.1.0"
