"""Kernel processes: one ipykernel and its single set of ZMQ channels (``kernel``), how a replica starts them
(``factory``: sanitised environment, capture module, preloads) and the warm pool they come from (``pool``)."""
