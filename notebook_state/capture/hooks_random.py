"""Built-in hooks for the global random generators: the ``random`` module's and numpy's legacy ``RandomState``
(``np.random.seed``, ``np.random.rand``, ...). ``np.random.default_rng()`` generators are variables.

A generator drawn from by library code (scikit-learn with ``random_state=None``) changes without the cell
naming it, so "did the cell touch it" cannot be read from the cell's source; instead the fingerprint hashes the
generator's state in place, which costs less than half a microsecond.
"""

from __future__ import annotations

import contextlib
import ctypes
import random
import sys
from typing import Any

import xxhash

from .hooks import Context, Hook, Same

# -- the random module's generator ----------------------------------------------------------------------------


class RawState:
    """A fingerprint of a C generator's state: a hash of its memory, not a copy of it as a Python tuple.

    ``random.getstate()`` builds 625 ints (about 13 us) and numpy's ``get_state()`` about 70 us; hashing the
    2.5 KB the generator lives in costs under half a microsecond. The view is checked once against the public
    state; where the layout differs (another interpreter), the public state is the fingerprint.
    """

    def __init__(self, owner: Any, address: int, size: int, expected: bytes) -> None:
        self.owner = owner  # keeps the memory alive
        self.view: Any = None
        with contextlib.suppress(Exception):
            view = (ctypes.c_char * size).from_address(address)
            if bytes(view) == expected:
                self.view = view

    def digest(self) -> int | None:
        return None if self.view is None else xxhash.xxh3_64_intdigest(self.view)


_random_raw: RawState | None = None


def _random_raw_state() -> RawState:
    global _random_raw
    inst: Any = random._inst
    if _random_raw is None or _random_raw.owner is not inst:
        words = inst.getstate()[1]
        # CPython's RandomObject: PyObject_HEAD, int index, uint32_t state[624].
        expected = words[-1].to_bytes(4, sys.byteorder) + b"".join(w.to_bytes(4, sys.byteorder) for w in words[:-1])
        _random_raw = RawState(inst, id(inst) + object.__basicsize__, 4 * 625, expected)
    return _random_raw


def _random_fingerprint(ctx: Context) -> Any:
    inst: Any = random._inst
    digest = _random_raw_state().digest()
    return (Same(inst), digest, inst.gauss_next) if digest is not None else inst.getstate()


RANDOM = Hook(
    "random",
    fingerprint=_random_fingerprint,
    baseline=_random_fingerprint,
    # Untouched since the kernel started: a fresh kernel's generator is as good (both seeded by the OS).
    capture=lambda ctx: None if ctx.fingerprint == ctx.baseline else random.getstate(),
    restore=lambda state, ctx: random.setstate(state),
    order=950,  # after anything restored that could draw from it
    plain=True,
    each_cell=True,  # a widget's callback may draw between cells: checked even after a cell that runs nothing
)


# -- numpy's legacy global RandomState (np.random.seed, np.random.rand, ...) ------------------------------

_np_raw: RawState | None = None
# The legacy normal sampler draws two values and keeps one for the next call, which then changes only that
# cached flag: while a captured state holds one, the fingerprint also reads the (slower) public state.
_gauss_pending = False


def _legacy_state() -> Any:
    return sys.modules["numpy.random"].mtrand._rand


def _np_raw_state(bits: Any) -> RawState:
    global _np_raw
    if _np_raw is None or _np_raw.owner is not bits:
        state = bits.state
        expected = b""
        if state.get("bit_generator") == "MT19937":
            key, pos = state["state"]["key"], int(state["state"]["pos"])
            expected = key.astype("<u4" if sys.byteorder == "little" else ">u4").tobytes()
            expected += pos.to_bytes(4, sys.byteorder, signed=True)
        # mt19937_state: uint32_t key[624]; int pos
        _np_raw = RawState(bits, bits.ctypes.state_address, 2500, expected) if expected else RawState(bits, 0, 0, b"-")
    return _np_raw


def _public(rs: Any) -> tuple[Any, ...]:
    st = rs.get_state()
    return (st[0], st[1].tobytes(), *st[2:])


def _np_random_fingerprint(ctx: Context) -> Any:
    rs = _legacy_state()
    bits = rs._bit_generator
    digest = _np_raw_state(bits).digest()
    if digest is None:
        return _public(rs)
    return (Same(rs), Same(bits), digest, _public(rs)[3:] if _gauss_pending else None)


def _capture_np_random(ctx: Context) -> Any:
    global _gauss_pending
    if ctx.fingerprint == ctx.baseline:
        return None  # untouched since the kernel started: a fresh kernel's generator is as good
    state = _legacy_state().get_state()
    _gauss_pending = bool(state[3])
    return state


def _restore_np_random(state: Any, ctx: Context) -> None:
    global _gauss_pending
    _legacy_state().set_state(state)
    _gauss_pending = bool(state[3])


NUMPY_RANDOM = Hook(
    "numpy.random",
    fingerprint=_np_random_fingerprint,
    baseline=_np_random_fingerprint,
    capture=_capture_np_random,
    restore=_restore_np_random,
    requires="numpy.random",
    order=960,
    plain=True,
    each_cell=True,
)

HOOKS = [RANDOM, NUMPY_RANDOM]
