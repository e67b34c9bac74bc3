"""``python -m numbasoftmax bench [options]``: the benchmark (see ``numbasoftmax._bench``)."""

import sys

from ._bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
