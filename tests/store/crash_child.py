"""Child process of the crash-safety test: ingests without end through the
store's writer and prints one line per committed batch, flushed at once, so
the parent knows exactly what was reported committed before it SIGKILLs us.

Usage: python -m tests.store.crash_child DB_URL
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta

from orchestrator.store import (
    CommitReport,
    Decision,
    StoreConfig,
    StoreWriter,
    WriterConfig,
    open_store,
)
from tests.store.conftest import sample, vm

VMS = 50


def report(batch: CommitReport) -> None:
    seqs = sorted(s.target_kb for s in batch.samples)
    decisions = sorted(d.new_target_kb for d in batch.decisions)
    sys.stdout.write(
        f"{batch.batch} {len(seqs)} {','.join(map(str, seqs[:1] + seqs[-1:]))} "
        f"{','.join(map(str, decisions)) or '-'}\n"
    )
    sys.stdout.flush()


def main() -> None:
    store = open_store(sys.argv[1], config=StoreConfig(host="crash"))
    start = datetime.now(UTC) - timedelta(hours=1)
    config = WriterConfig(
        max_queued_samples=1_000_000,
        batch_max_samples=5_000,
        linger_s=0.01,
        maintenance_interval_s=0.2,
    )
    with StoreWriter(store, config, on_commit=report) as writer:
        seq = 0
        while True:
            burst = []
            for _ in range(1_000):
                # The sequence number rides in target_kb, so the parent can
                # check each reported batch row by row.
                at = start + timedelta(seconds=seq // VMS)
                burst.append(sample(vm(seq % VMS), at, target_kb=seq))
                seq += 1
            writer.record_samples(burst)
            writer.record_decision(
                Decision(
                    domain=vm(seq % VMS),
                    time=start + timedelta(seconds=seq // VMS),
                    old_target_kb=0,
                    new_target_kb=seq,
                    reason="crash-test",
                )
            )
            time.sleep(0.02)


if __name__ == "__main__":
    main()
