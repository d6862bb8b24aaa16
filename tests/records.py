"""Plans with decisions written by hand, as records (`graphexec.decisions`), for tests of what
is said about them (print(plan), summaries, the demo line)."""

from __future__ import annotations

import dataclasses

from graphexec.decisions import MODULE, OVERLAP, Decision
from graphexec.plans import Plan

__all__ = ["as_is", "one_by_one", "overlapped"]


def one_by_one(plan: Plan, why: str) -> Plan:
    """``plan`` run one by one, because ``why`` (an overlap decision that lost)."""
    record = Decision(OVERLAP, "one by one", f"one by one: {why}", detail={"why": why})
    return dataclasses.replace(plan, one_by_one=True, decisions=(*plan.decisions, record))


def overlapped(plan: Plan, why: str) -> Plan:
    """``plan`` overlapped, because ``why`` (an overlap decision that won)."""
    record = Decision(OVERLAP, "overlapped", f"overlap kept: {why}", detail={"why": why})
    return dataclasses.replace(plan, one_by_one=False, decisions=(*plan.decisions, record))


def as_is(plan: Plan, module: object, why: str | None = None) -> Plan:
    """``plan`` running ``module`` as it is; with ``why``, a decision that says so."""
    records = () if why is None else (Decision(
        MODULE, "module", f"runs the traced module as it is: {why}", detail={"why": why}),)
    return dataclasses.replace(plan, as_is=module, one_by_one=True,
                               decisions=(*plan.decisions, *records))  # fmt: skip
