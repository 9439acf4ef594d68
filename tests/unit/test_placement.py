"""Placement, in-process: the one decision of where a session is served, for every face.

The directory here is scripted (it says what the store would say), so each branch of the decision can be
driven exactly; the end-to-end replica tests cover the same decisions against real replicas and Redis.
"""

from __future__ import annotations

from typing import Any

import pytest

from kernel_gateway.peers import PeerClaim
from kernel_gateway.placement import ATTEMPTS, Here, Owner, OwnerGone, OwnerMoved, Placement
from kernel_gateway.sessions.errors import Misdirected, OwnedElsewhere, SessionNotFound


class Directory:
    """Answers resolve/take_over from a script; records what it was asked."""

    def __init__(self, resolve: list[Any], take_over: list[Any] | None = None) -> None:
        self._resolve = list(resolve)
        self._take_over = list(take_over or [])
        self.calls: list[tuple[str, ...]] = []

    async def resolve(self, session_id: str, tenant: str | None = None) -> Any:
        self.calls.append(("resolve", session_id))
        return self._answer(self._resolve.pop(0))

    async def take_over(self, session_id: str, epoch: int, tenant: str | None = None) -> Any:
        self.calls.append(("take_over", session_id, str(epoch)))
        return self._answer(self._take_over.pop(0))

    @staticmethod
    def _answer(item: Any) -> Any:
        if isinstance(item, Exception):
            raise item
        return item


def elsewhere(epoch: int, url: str = "http://b") -> OwnedElsewhere:
    return OwnedElsewhere("s", f"replica-{epoch}", url, epoch)


FORWARDED = PeerClaim("replica-a", None, None)


async def here_ok(session: Any) -> str:
    return f"here:{session}"


async def test_a_live_session_is_served_here() -> None:
    placement = Placement(Directory(["session-s"]))
    assert await placement.locate("s", forwarded=False) == Here("session-s")  # type: ignore[arg-type]
    assert await Placement(Directory(["session-s"])).serve("s", None, here_ok, _unreachable) == "here:session-s"


async def test_a_live_owner_elsewhere_is_reached_there() -> None:
    directory = Directory([elsewhere(4)])
    reached: list[Owner] = []

    async def there(owner: Owner) -> str:
        reached.append(owner)
        return "forwarded"

    assert await Placement(directory).serve("s", None, here_ok, there) == "forwarded"
    assert reached == [Owner("s", "replica-4", "http://b", 4)]
    assert ("take_over", "s", "4") not in directory.calls


async def test_a_forwarded_request_that_misses_is_misdirected_never_taken_over() -> None:
    directory = Directory([elsewhere(4)])
    with pytest.raises(Misdirected):
        await Placement(directory).serve("s", FORWARDED, here_ok, _unreachable)
    assert directory.calls == [("resolve", "s")]


async def test_an_owner_that_refuses_is_taken_over_fenced_on_its_epoch() -> None:
    directory = Directory([elsewhere(4)], take_over=["session-s"])

    async def there(owner: Owner) -> str:
        raise OwnerGone("connection refused")

    assert await Placement(directory).serve("s", None, here_ok, there) == "here:session-s"
    assert directory.calls == [("resolve", "s"), ("take_over", "s", "4")]


async def test_losing_the_take_over_race_follows_the_winner() -> None:
    directory = Directory([elsewhere(4)], take_over=[elsewhere(5, "http://c")])
    tried: list[str] = []

    async def there(owner: Owner) -> str:
        tried.append(owner.url)
        if owner.url == "http://b":
            raise OwnerGone("refused")
        return f"forwarded to {owner.url}"

    assert await Placement(directory).serve("s", None, here_ok, there) == "forwarded to http://c"
    assert tried == ["http://b", "http://c"]


async def test_a_session_that_keeps_moving_gives_up_after_a_bounded_number_of_hops() -> None:
    directory = Directory([elsewhere(1)], take_over=[elsewhere(e) for e in range(2, 2 + ATTEMPTS)])

    async def there(owner: Owner) -> str:
        raise OwnerGone("refused")

    with pytest.raises(Misdirected, match="kept moving"):
        await Placement(directory).serve("s", None, here_ok, there)
    assert len([c for c in directory.calls if c[0] == "take_over"]) == ATTEMPTS


async def test_an_unknown_session_is_not_found() -> None:
    with pytest.raises(SessionNotFound):
        await Placement(Directory([SessionNotFound("s")])).serve("s", None, here_ok, _unreachable)


async def test_a_claim_for_another_replica_identity_is_misdirected_before_any_lookup() -> None:
    directory = Directory([])
    placement = Placement(directory, replica_id="new-process")
    with pytest.raises(Misdirected, match="not old-process"):
        await placement.serve("s", PeerClaim("replica-a", None, "old-process"), here_ok, _unreachable)
    assert directory.calls == []
    assert (
        await Placement(Directory(["session-s"]), "me").serve(
            "s", PeerClaim("replica-a", None, "me"), here_ok, _unreachable
        )
        == "here:session-s"
    )


async def test_an_owner_that_says_the_session_moved_is_looked_up_again_not_taken_over() -> None:
    directory = Directory([elsewhere(4), elsewhere(5, "http://c")])
    tried: list[str] = []

    async def there(owner: Owner) -> str:
        tried.append(owner.url)
        if owner.url == "http://b":
            raise OwnerMoved()
        return f"forwarded to {owner.url}"

    assert await Placement(directory).serve("s", None, here_ok, there) == "forwarded to http://c"
    assert [c[0] for c in directory.calls] == ["resolve", "resolve"]


async def _unreachable(owner: Owner) -> str:
    raise AssertionError(f"must not reach an owner: {owner}")
