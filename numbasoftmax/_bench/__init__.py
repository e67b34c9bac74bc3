"""The benchmark behind ``python -m numbasoftmax bench``, one module per job:

* ``config``: what a run measures (devices, operations, dtypes, sizes, variants, the
  where=/dtype= feature cells, budgets);
* ``environment``: the machine and library versions, and the load of other processes;
* ``timing``: clocks and copy bandwidth, one timing device per kind of hardware;
* ``checks``: benchmark data and the correctness check against the float64 reference;
* ``progress``: the progress bar (tqdm);
* ``sweep``: checks, copy bandwidth, timed cells and latency rows, in order;
* ``records``: what a run records;
* ``report`` and ``plot``: Markdown tables, results.json and bench.png;
* ``cli``: the command line.

GB/s counts the bytes an ideal kernel moves (``numbasoftmax._ops.Op.bytes_moved``); ratios
("× torch") are our GB/s over the peer's (its time over ours; > 1: numbasoftmax is faster).
"""
