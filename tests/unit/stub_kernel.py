"""A kernel as the warm pool and its callers see one: ready, and shut down when told (tests of gated starts)."""

from __future__ import annotations

from kernel_gateway.kernels.kernel import KernelState


class StubKernel:
    state = KernelState.READY

    def __init__(self) -> None:
        self.shut_down = False

    async def shutdown(self, now: bool = False) -> None:
        self.shut_down = True
