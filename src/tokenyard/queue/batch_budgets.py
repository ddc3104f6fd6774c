"""What a batch (the Batch API's, or a Message Batch) asks of its key's budgets: its worst case held from the
moment it is accepted until it ends, drawn down line by line as its answers are charged.

The proxy's spend gate answers it; the queue is handed the protocol, not the proxy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tokenyard.admission.auth import Principal


class BatchBudgets(Protocol):
    """Reserve a new batch's worst case on its key's budgets, and let go of what is left when it ends."""

    async def hold_batch(
        self, who: Principal, batch_id: str, lines: Sequence[tuple[str, bytes]], ends_at: float
    ) -> str:
        """Reserve the worst case of ``lines`` (model and request body each) on every budget of ``who``,
        held until ``ends_at`` (unix s) and some slack; the reservation its lines' answers draw down ("":
        none was made, no budget counts the key). Raises ``BudgetExhausted`` when a hard budget that rejects
        cannot hold it."""
        ...

    def let_go(self, key_id: str, reservation: str) -> None:
        """Let go of what is left of a reservation held for ``key_id``'s async work (a batch that ended), in
        the background."""
        ...
