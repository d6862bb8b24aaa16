"""What every run of one plan shares, made once per plan and cached by the executor.

Building the dependency counts, priorities and freeing counts of a plan, and generating its
programs (`graphexec.codegen`), costs time that grows with the graph: a `Schedule` does it
once, so a call pays only for what it runs (its counters are copied, not rebuilt).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..codegen import Program, plan_program, task_program
from ..plans import Plan

__all__ = ["Schedule"]


class Schedule:
    """What every run of one plan shares, made once per plan: the dependency counts, the
    critical-path priorities, the freeing counts and the generated programs (task by task,
    and `straight`: the whole plan as one function, for plans run one by one)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.nodes = plan.graph.nodes
        self.waiting = {t: len(task.deps) for t, task in plan.tasks.items()}
        self.order = {t: i for i, t in enumerate(plan.tasks)}
        self.bottom = {t: task.bottom for t, task in plan.tasks.items()}
        self.refs = {v: len(c) for v, c in plan.consumers.items()}
        self.dependents: dict[str, list[str]] = {t: [] for t in plan.tasks}
        for t, task in plan.tasks.items():
            for d in task.deps:
                self.dependents[d].append(t)
        self._programs: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {}
        self._straight: Program | None = None

    @property
    def straight(self) -> Program:
        if self._straight is None:
            order = [n for task in self.plan.tasks.values() for n in task.nodes]
            self._straight = plan_program(self.plan.graph, order)
        return self._straight

    def program(self, name: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
        """The task's compiled callable (``plan.compiled``), else its generated program."""
        fn = self._programs.get(name)
        if fn is None:
            compiled = self.plan.compiled.get(name) if self.plan.compiled else None
            t = self.plan.tasks[name]
            fn = compiled or task_program(self.nodes, t.nodes, t.inputs, t.outputs, t.release,
                                          t.name)  # fmt: skip
            self._programs[name] = fn
        return fn
