"""A process that holds a Telemetry until it is killed (for the last-will test).

Usage: python telemetry_holder.py BROKER_PORT PREFIX HOST_NAME
Prints "published" once its status reached the broker, then waits forever.
"""

from __future__ import annotations

import asyncio
import sys
import time

from orchestrator.telemetry import BrokerSettings, HostStatusMsg, Telemetry, TelemetrySettings


async def main(port: int, prefix: str, host: str) -> None:
    settings = TelemetrySettings(
        host_name=host, topic_prefix=prefix, broker=BrokerSettings(port=port)
    )
    async with Telemetry(settings) as telemetry:
        telemetry.publish_status(
            HostStatusMsg(
                version="holder", vms_managed=0, host_total_kb=1, host_free_kb=1, budget_kb=1,
                budget_used_kb=0, paused=False, interval_s=5.0, updated=time.time(),
            )
        )
        while telemetry.stats.published < 1:
            await asyncio.sleep(0.01)
        print("published", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
