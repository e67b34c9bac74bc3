"""The operations, in one table for the public API, the backends, the registry of
implementations and the benchmark.

An operation is named by its public function. Its arguments are named as in the public
signatures (error messages name them); a gradient takes the saved output of its forward
operation and the upstream gradient.

Memory traffic of an ideal kernel, the unit of every GB/s figure: a forward operation reads
X and writes Y (2 arrays), a gradient reads Y and dY and writes dX (3 arrays); logsumexp
reads X (1 array: its result is a value per row) and its gradient reads X and writes dX
(2 arrays: lse and dlse are a value per row).
"""

from __future__ import annotations

from typing import NamedTuple


class Op(NamedTuple):
    name: str  # the public function: numbasoftmax.<name>
    args: tuple[str, ...]  # array arguments as the public signature names them
    forward: str  # the forward operation (a gradient's first argument is its output)
    title: str  # for tables and plots
    reduces: bool = False  # one value per row (logsumexp) instead of an array like x
    row_args: int = 0  # trailing arguments of one value per row (logsumexp's gradient)

    @property
    def backward(self) -> bool:
        return self.name != self.forward

    def bytes_moved(self, elements, itemsize):
        """Bytes an ideal kernel moves: every input array read once, the result written
        once (a reduction's result and per-row arguments are not counted: a row's few
        bytes against its elements)."""
        arrays = len(self.args) - self.row_args + (0 if self.reduces else 1)
        return arrays * elements * itemsize


SOFTMAX = Op("softmax", ("x",), "softmax", "softmax forward")
LOG_SOFTMAX = Op("log_softmax", ("x",), "log_softmax", "log_softmax forward")
SOFTMAX_BACKWARD = Op("softmax_backward", ("y", "dy"), "softmax", "softmax backward")
LOG_SOFTMAX_BACKWARD = Op("log_softmax_backward", ("z", "dz"), "log_softmax",
                          "log_softmax backward")

LOGSUMEXP = Op("logsumexp", ("x",), "logsumexp", "logsumexp", reduces=True)
LOGSUMEXP_BACKWARD = Op("logsumexp_backward", ("x", "lse", "dlse"), "logsumexp",
                        "logsumexp backward", row_args=2)

OPS = {op.name: op for op in (SOFTMAX, LOG_SOFTMAX, SOFTMAX_BACKWARD, LOG_SOFTMAX_BACKWARD,
                              LOGSUMEXP, LOGSUMEXP_BACKWARD)}
NAMES = tuple(OPS)
FORWARD = tuple(name for name, op in OPS.items() if not op.backward)
# the four softmax operations (same-shape arrays in and out)
SOFTMAX_NAMES = NAMES[:4]


def get(name):
    """The Op called ``name``; ValueError naming the known ones otherwise."""
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown operation {name!r}; expected one of "
                         f"{', '.join(NAMES)}") from None
