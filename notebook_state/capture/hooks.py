"""The registry of process-state hooks: state a notebook relies on that is not a variable.

A variable lives in the user namespace and is checkpointed by the tracker. Everything else a cell can change
for the cells after it (the random generators, ``sys.path``, the working directory, matplotlib's backend,
IPython's formatters and magics, a library's global options, ...) lives in the process; a hook says how one
such piece is captured after a cell and put back into a fresh kernel. The built-in hooks (``hooks_runtime``,
``hooks_modules``, ``hooks_random``, ``hooks_ipython``, ``hooks_display``, ``hooks_history``,
``hooks_libraries``, ``hooks_matplotlib``) are registered through this same registry when the capture is
installed; a library or a notebook adds its own with :func:`register`, inside the kernel::

    from notebook_state.capture.hooks import Hook, register

    def fingerprint(ctx):  # cheap, runs after every cell: when it is == to the last one, nothing is captured
        return mylib.config_version()

    register(Hook(
        "mylib.config",
        fingerprint=fingerprint,
        capture=lambda ctx: mylib.get_config() or None,  # None: nothing to restore (as in a fresh kernel)
        restore=lambda state, ctx: mylib.set_config(state),
        requires="mylib",  # skipped until this module is imported: costs nothing before
    ))

Contract of a hook:

- ``fingerprint(ctx)`` runs after every cell once its module is imported (see ``requires``), so it must cost
  a microsecond or so. It returns any value; the state is captured again only when it is not ``==`` to the
  value of the last capture (or when the service asks for a full checkpoint). A value that changes in place
  compares equal to itself: return a snapshot (a tuple), a :class:`Version` of it, or :class:`Same` for an
  object that is replaced on each change. ``fingerprint=None`` means "capture after every cell".
- ``capture(ctx)`` returns the state, pickled like a variable (cloudpickle, notebook functions by value; with
  ``plain=True`` by the faster C pickler, for built-in data and objects importable by name). ``None`` means
  nothing differs from a fresh kernel (nothing is stored); :class:`Parts` stores several blobs that change
  independently (only changed parts are written again). ``ctx.lost(reason)`` names what it had to leave
  out; raising loses the hook's whole state, with the reason. ``ctx.baseline`` is what ``baseline(ctx)``
  returned before the notebook's first cell (a fresh kernel's state), ``ctx.fingerprint`` the value just
  taken, ``ctx.previous`` the one of the last capture (None on the first or a full one), ``ctx.memo`` a dict
  the hook keeps from one call to the next (in this kernel: a restore may fill it for the next capture).
- After a cell that runs no code of its own (no call, import, loop, comparison, ..., and only objects of
  built-in or library types named: ``x = x + 1``) only hooks with ``each_cell=True`` are fingerprinted: nothing
  else can have moved.
- ``restore(state, ctx)`` puts the state back into a fresh kernel, in the order of ``order``: hooks with
  ``before_variables`` run before any variable is loaded (the working directory, ``sys.path``, modules: what
  unpickling needs), the others after variables and replays. Raising, or ``ctx.lost(reason)``, names what did
  not come back in the restore report (``process.lost``).

Hooks registered in a notebook are themselves checkpointed (pickled by value) and registered again before a
restore; a library's hooks come back when the library is imported again (``sys.modules`` is restored early).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Context", "Hook", "Parts", "Same", "Version", "register", "registered", "trait", "unregister"]

EARLY = 100  # hooks ordered below this run before variables are restored


class Context:
    """What a hook may look at; one per capture or restore of a hook (a plain class: one is made after every
    cell, and a dataclass's default factories cost more than the fingerprints it serves)."""

    __slots__ = ("baseline", "fingerprint", "full", "memo", "ns", "previous", "problems", "shell", "user_ids")

    def __init__(
        self,
        shell: Any,
        ns: dict[str, Any],
        baseline: Any = None,
        full: bool = False,
        user_ids: dict[str, int] | None = None,
        memo: dict[str, Any] | None = None,
    ) -> None:
        self.shell = shell
        self.ns = ns
        self.baseline = baseline  # this hook's ``baseline(ctx)`` value, taken before the notebook's first cell
        self.full = full  # a full checkpoint: return every part, not only the changed ones
        self.user_ids = user_ids if user_ids is not None else {}  # {user variable: id(value)} after the cell
        self.previous: Any = None  # the fingerprint of this hook's last capture (None: first, or full)
        self.fingerprint: Any = None  # the fingerprint just taken, in capture (compare it with ``baseline``)
        self.problems: list[str] = []
        self.memo = memo if memo is not None else {}  # this hook's own scratch space, for this kernel

    def lost(self, reason: str) -> None:
        """Name something this hook could not capture or restore (shown in the restore report)."""
        self.problems.append(reason)


class Parts(dict[str, Any]):
    """A hook's state as independent parts ``{key: state}``, each stored as its own blob.

    With ``keep``, the parts named there are unchanged since the last capture and were not computed again
    (a hook that appends, such as the input history, returns only its newest part). A full checkpoint
    (``ctx.full``) must return every part. Parts named in ``inline`` are small and change with nearly every
    cell (the open end of the input history): they travel inside the manifest, which is written after every
    cell anyway, instead of costing a blob of their own; return them with every capture.
    """

    def __init__(
        self, parts: dict[str, Any] | None = None, keep: Iterable[str] = (), inline: Iterable[str] = ()
    ) -> None:
        super().__init__(parts or {})
        self.keep = keep if isinstance(keep, frozenset) else frozenset(keep)
        self.inline = inline if isinstance(inline, frozenset) else frozenset(inline)


def trait(obj: Any, name: str) -> Any:
    """A traitlets attribute read from the instance's value dict: the descriptor costs about a microsecond a
    read, and fingerprints read several after every cell."""
    values = getattr(obj, "_trait_values", None)
    if isinstance(values, dict) and name in values:
        return values[name]
    return getattr(obj, name)


class Same:
    """A fingerprint equal only to one that holds the very same object (for state that is replaced, never
    changed in place, on every change: a ContextVar's value, ``shell.config``). Holding the object keeps its
    id from being reused."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


class Version:
    """A counter that moves when a compared snapshot changes: a fingerprint for state changed in place.

    ``version(current)`` compares ``current`` with the copy taken when the counter last moved (a C-level
    ``==`` of dicts costs well under a microsecond for a few dozen entries) and copies only on a change.
    """

    def __init__(self, copy: Callable[[Any], Any] = dict) -> None:
        self._copy = copy
        self._snapshot: Any = None
        self._count = 0

    def __call__(self, current: Any) -> int:
        if self._count == 0 or current != self._snapshot:
            self._snapshot = self._copy(current)
            self._count += 1
        return self._count


@dataclass(frozen=True)
class Hook:
    name: str
    capture: Callable[[Context], Any]
    restore: Callable[[Any, Context], None]
    fingerprint: Callable[[Context], Any] | None = None
    baseline: Callable[[Context], Any] | None = None
    requires: str | None = None  # a module name: the hook is skipped until it is in sys.modules
    before_variables: bool = False
    order: int = 500
    plain: bool = False  # the state is built-in data or objects importable by name: the C pickler will do
    each_cell: bool = False  # fingerprinted even after a cell that ran no code of its own (the history)

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return (0 if self.before_variables else 1, self.order, self.name)


_hooks: dict[str, Hook] = {}
_builtin: set[str] = set()
_sorted: list[Hook] | None = None
_added: tuple[Hook, ...] = ()
_each_cell: list[Hook] = []


def register(hook: Hook) -> None:
    """Add ``hook``, replacing any hook of the same name (a library imported again registers again)."""
    global _sorted
    _hooks[hook.name] = hook
    _builtin.discard(hook.name)
    _sorted = None


def unregister(name: str) -> None:
    global _sorted
    _hooks.pop(name, None)
    _builtin.discard(name)
    _sorted = None


def registered() -> list[Hook]:
    """Every hook, in restore order (checkpoints use the same order)."""
    global _sorted, _added, _each_cell
    if _sorted is None:
        _sorted = sorted(_hooks.values(), key=lambda h: h.sort_key)
        _added = tuple(h for h in _sorted if h.name not in _builtin)
        _each_cell = [h for h in _sorted if h.each_cell]
    return _sorted


def each_cell_hooks() -> list[Hook]:
    """The hooks looked at even after a cell that ran no code of its own."""
    registered()
    return _each_cell


def added_hooks() -> tuple[Hook, ...]:
    """The hooks registered after the built-ins (by a notebook or a library): checkpointed themselves."""
    registered()
    return _added


def register_builtin(hooks: list[Hook]) -> None:
    """The built-in hooks (``process_state`` registers them): a hook of the same name registered before stays."""
    global _sorted
    for hook in hooks:
        if hook.name not in _hooks:
            _hooks[hook.name] = hook
            _builtin.add(hook.name)
    _sorted = None
