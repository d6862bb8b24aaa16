"""Exception types of graphexec.

Distinct conditions get distinct types (as networkx does), all under `GraphError`
for mistakes in the graph itself, so a caller can catch one family or one case.
Every message names the node it is about.

    GraphError                     a wrong graph, found at build, plan or bind time
    ├── DuplicateNameError         two nodes (or inputs) share a name
    ├── UnknownNodeError           an input names no node of this graph, or a node of another graph
    ├── CycleError                 the graph has a cycle (the message prints it)
    ├── UnreachableOutputError     an output that nothing produces
    └── ArityError                 a node called with the wrong number of inputs, or a run with
                                   the wrong number of graph inputs
    NodeError                      a node raised while running (original exception chained)
"""

from __future__ import annotations

__all__ = [
    "GraphError",
    "DuplicateNameError",
    "UnknownNodeError",
    "CycleError",
    "UnreachableOutputError",
    "ArityError",
    "NodeError",
    "DeadNodeWarning",
    "InPlaceWarning",
]


class GraphError(ValueError):
    """A graph is wrong: raised at build, plan or bind time, naming the node."""

    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node


class DuplicateNameError(GraphError):
    """Two nodes or inputs of one graph share a name."""


class UnknownNodeError(GraphError):
    """A node's input is not a node of this graph (unknown name, or from another graph)."""


class CycleError(GraphError):
    """The graph has a cycle; ``cycle`` holds the node names around it."""

    def __init__(self, message: str, cycle: list[str]):
        super().__init__(message, node=cycle[0] if cycle else None)
        self.cycle = cycle


class UnreachableOutputError(GraphError):
    """An output refers to something no node of the graph produces."""


class ArityError(GraphError):
    """A callable or a run was given the wrong number of inputs."""


class NodeError(RuntimeError):
    """A node raised while running.

    The message names the node (and the task it ran in); the original exception is
    chained as ``__cause__``, so its traceback prints below this one.
    """

    def __init__(self, node: str, cause: BaseException, task: str | None = None):
        where = f"node '{node}'" + (f" (task '{task}')" if task and task != node else "")
        super().__init__(f"{where} failed: {type(cause).__name__}: {cause}")
        self.node = node
        self.task = task

    @classmethod
    def from_message(cls, node: str, task: str | None, message: str) -> NodeError:
        """A `NodeError` with its whole message given (unpickled, or rebuilt on the client
        from a Dask worker's report), not made from a cause."""
        err = cls.__new__(cls)
        RuntimeError.__init__(err, message)
        err.node, err.task = node, task
        return err

    def __reduce__(self):  # picklable across Dask workers
        return (NodeError.from_message, (self.node, self.task, str(self)))


def none_error(node: str, who: str) -> NodeError:
    """The error for a node whose value was None where a value was needed: ``who`` is what
    needed it (``"node 'head' reads"``, ``"is a graph output"``)."""
    return NodeError(node, ValueError(f"returned None, which {who} (a forgotten return?)"))


class DeadNodeWarning(UserWarning):
    """A node that no graph output depends on: it is planned but never run; or an input of a
    declared graph that no output depends on: a run takes it and ignores it."""


class InPlaceWarning(UserWarning):
    """A node's module writes its input in place (``inplace=True``) but the node declares no
    ``mutates=``: other readers of that tensor are not ordered around the write."""
