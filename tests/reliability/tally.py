"""The figures a reliability run reports at its end, gathered from the tests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Tally:
    """Counters and notes that the tests add to; ``conftest.py`` prints them at the end.

    Attributes:
        kills: Child processes killed with SIGKILL whose store was then checked and found
            sound (a kill is counted only once its checks have passed).
        batches_checked: Batches whose presence was checked after a kill or a disk fault:
            present in full, or absent (the load tests report their own counts).
        bad_inputs: Bad writes attempted (each must be refused with nothing written).
        rows_lost: Rows whose write had returned but that a later open did not find.
        notes: One line per figure worth reading (seeds, load counts, lock timings, ...).
        groups: Lines made of items gathered by several tests, printed as ``key: a, b``.
    """

    kills: int = 0
    batches_checked: int = 0
    bad_inputs: int = 0
    rows_lost: int = 0
    notes: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def add(self, group: str, item: str) -> None:
        """Add ``item`` to the summary line ``group``."""
        self.groups.setdefault(group, []).append(item)

    @property
    def touched(self) -> bool:
        """Whether any reliability test reported anything."""
        counted = self.kills or self.batches_checked or self.bad_inputs
        return bool(counted or self.notes or self.groups)

    def lines(self) -> list[str]:
        """The summary, one line per figure."""
        return [
            f"kills survived: {self.kills}",
            f"batches checked (after kills and disk faults): {self.batches_checked}",
            f"bad inputs tried: {self.bad_inputs}",
            f"rows lost: {self.rows_lost}",
            *self.notes,
            *(f"{group}: {', '.join(items)}" for group, items in self.groups.items()),
        ]
