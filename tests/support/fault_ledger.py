"""A ledger of injected faults, printed at the end of the test session (issue: the fault suite
prints faults injected, survived, trials lost, orphan processes)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FaultRecord:
    fault: str
    survived: bool
    trials_lost: int = 0
    orphans: int = 0
    note: str = ""


@dataclass
class Ledger:
    records: list[FaultRecord] = field(default_factory=list)

    def add(self, fault: str, *, survived: bool, trials_lost: int = 0, orphans: int = 0, note: str = "") -> None:
        self.records.append(FaultRecord(fault, survived, trials_lost, orphans, note))

    def table(self) -> str:
        if not self.records:
            return ""
        rows = [f"{'fault':44} {'survived':8} {'lost':4} {'orphans':7}  note"]
        for r in self.records:
            rows.append(f"{r.fault[:44]:44} {'yes' if r.survived else 'NO':8} {r.trials_lost:4} {r.orphans:7}  {r.note}")
        n = len(self.records)
        rows.append(f"{n} faults injected, {sum(r.survived for r in self.records)} survived, "
                    f"{sum(r.trials_lost for r in self.records)} trials lost, "
                    f"{sum(r.orphans for r in self.records)} orphan processes")
        return "\n".join(rows)


LEDGER = Ledger()
