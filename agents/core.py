"""The agent's bookkeeping between samples, as pure functions over a frozen state.

Given the state (last report written and when, the latest directive outcome,
which directive was taken up) and a fresh sample, :func:`plan_writes` says what
to write to xenstore now; :meth:`AgentState.after_writes` derives the next
state once the writes succeeded. No clock, no I/O: the async loop in
``agents.agent`` feeds time and samples in, and the simulator can drive this
directly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agents.change import ReportPolicy, report_reason
from agents.schema import (
    MAX_SEQ,
    DirectiveAck,
    InvalidDocument,
    Report,
    decode_report,
    encode_report,
)
from agents.source import IncompleteSample, MemorySample, to_report


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentState:
    """What the agent remembers between samples."""

    next_seq: int = 1
    """Sequence number of the next report."""
    last_sent: Report | None = None
    """The last report written."""
    last_sent_s: float | None = None
    """When it was written, seconds on the agent's clock."""
    ack: DirectiveAck | None = None
    """Outcome of the latest directive acted on; carried in every report."""
    ack_sent: bool = True
    """Whether ``ack`` has been in a written report yet."""
    acted_seq: int | None = None
    """Highest directive sequence number taken up (each is acted on once)."""
    meminfo_written: tuple[int | None, int | None] = (None, None)
    """Last values written to ``meminfo_total`` and ``meminfo_free``, KiB."""
    meminfo_written_s: float | None = None
    """When ``meminfo_*`` were last written, seconds."""
    quiet_until_s: float | None = None
    """After a refused write, no new attempt before this time, seconds."""

    def resumed(self, previous: Report, *, uptime_s: float | None) -> AgentState:
        """Continue after the report a previous run of the agent left in xenstore.

        Report numbers keep increasing. The directive outcome is kept, and the
        directive it answers is not acted on again, unless the guest rebooted
        since (its swap state is new, so a standing directive applies afresh).
        """
        same_boot = uptime_s is not None and uptime_s >= previous.uptime_s
        ack = previous.directive_ack
        return replace(
            self,
            next_seq=max(self.next_seq, min(previous.seq + 1, MAX_SEQ)),
            ack=ack if same_boot else None,
            acted_seq=ack.seq if same_boot and ack is not None else self.acted_seq,
        )

    def reconnected(self) -> AgentState:
        """A new xenstore connection: whether earlier writes landed is unknown
        (xenstored may have restarted empty), so everything is written afresh."""
        return replace(self, last_sent=None, last_sent_s=None, meminfo_written=(None, None),
                       meminfo_written_s=None, quiet_until_s=None)

    def with_ack(self, ack: DirectiveAck) -> AgentState:
        """Record a directive outcome; the next report carries it at once."""
        return replace(self, ack=ack, ack_sent=False)

    def taking_up(self, directive_seq: int) -> AgentState:
        """Record that a directive is being acted on."""
        return replace(self, acted_seq=directive_seq)

    def is_new_directive(self, directive_seq: int) -> bool:
        """Whether a directive with this sequence number has not been acted on."""
        return self.acted_seq is None or directive_seq > self.acted_seq

    def after_writes(self, plan: WritePlan, *, now_s: float) -> AgentState:
        """The state once every write of ``plan`` succeeded."""
        state = self
        if plan.report is not None:
            state = replace(
                state,
                next_seq=min(plan.report.seq + 1, MAX_SEQ),
                last_sent=plan.report,
                last_sent_s=now_s,
                ack_sent=True,
                quiet_until_s=None,
            )
        if plan.meminfo:
            state = replace(state, meminfo_written=plan.meminfo_values, meminfo_written_s=now_s)
        return state

    def refused(self, *, now_s: float, policy: ReportPolicy) -> AgentState:
        """A write was refused: do not retry before the next heartbeat."""
        return replace(self, quiet_until_s=now_s + policy.heartbeat_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class WritePlan:
    """What to write now. Empty when the agent should stay quiet."""

    report: Report | None = None
    """The report to write, or ``None``."""
    report_bytes: bytes = b""
    """``report`` encoded as schema v1."""
    reason: str = ""
    """Why the report goes out now (for debug logs)."""
    meminfo: dict[str, int] | None = None
    """``{"total": KiB, "free": KiB}`` to write to ``meminfo_*``, or ``None``."""
    meminfo_values: tuple[int | None, int | None] = (None, None)
    """Both meminfo values as they will stand after the writes."""
    unreportable: str | None = None
    """Why no report could be built from the sample, if so."""


def plan_writes(
    state: AgentState, sample: MemorySample, *, now_s: float, policy: ReportPolicy
) -> WritePlan:
    """Decide what the agent writes after taking ``sample`` at ``now_s``."""
    if state.quiet_until_s is not None and now_s < state.quiet_until_s:
        return WritePlan()
    report: Report | None = None
    raw = b""
    reason: str | None = None
    unreportable: str | None = None
    try:
        candidate = to_report(sample, seq=state.next_seq, ack=state.ack)
    except IncompleteSample as exc:
        unreportable = str(exc)
    else:
        reason = report_reason(
            last=state.last_sent,
            last_sent_s=state.last_sent_s,
            candidate=candidate,
            now_s=now_s,
            policy=policy,
            new_ack=not state.ack_sent,
        )
        if reason is not None:
            # Encoded (and checked) only when it is going out: most samples are
            # not sent. The controller decodes strictly; a report it would reject
            # (figures read at slightly different moments can disagree) is not sent.
            try:
                raw = encode_report(candidate)
                decode_report(raw)
            except InvalidDocument as exc:
                unreportable, reason = str(exc), None
            else:
                report = candidate
    meminfo_due = report is not None or (
        unreportable is not None
        and (
            state.meminfo_written_s is None
            or now_s - state.meminfo_written_s >= policy.heartbeat_s
        )
    )
    meminfo: dict[str, int] = {}
    values = state.meminfo_written
    if meminfo_due:
        total, free = sample.mem_total_kb, sample.mem_free_kb
        if total is not None and total != values[0]:
            meminfo["total"] = total
        if free is not None and free != values[1]:
            meminfo["free"] = free
        values = (
            total if total is not None else values[0],
            free if free is not None else values[1],
        )
    return WritePlan(
        report=report,
        report_bytes=raw if report is not None else b"",
        reason=reason or "",
        meminfo=meminfo or None,
        meminfo_values=values,
        unreportable=unreportable,
    )
