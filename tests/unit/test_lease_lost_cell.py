"""What a 409 LeaseLost says of the cell: a client sends a ``not saved`` cell again, so it must never say so of
a cell whose commit may have landed (a commit sent, its answer lost, then the fence refused the next one: the
new owner resumed from it). Seen as a cell run twice across a Redis Cluster failover."""

from __future__ import annotations

import pytest

from notebook_state.errors import LeaseLost
from notebook_state.persistence import Persistence
from notebook_state.store import Fence, SessionRecord


@pytest.mark.parametrize(("uncertain", "cell"), [(False, "not saved"), (True, "unknown")])
async def test_a_lost_lease_names_the_cell_unknown_when_a_commit_answer_was_lost(uncertain: bool, cell: str) -> None:
    persistence = Persistence(None, SessionRecord(id="s", kernel_name="python3", created=0.0), Fence(1, "n"))  # type: ignore[arg-type]
    persistence.lost = True
    persistence.state.uncertain = uncertain
    with pytest.raises(LeaseLost) as raised:
        await persistence.after_cell(None)  # type: ignore[arg-type]
    assert raised.value.details == {"cell": cell}
    assert ("may have been committed" in str(raised.value)) is uncertain
