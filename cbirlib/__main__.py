"""``python -m cbirlib``: the ``cbirlib`` command (as ``python -m cbirlib.cli``)."""

import sys

from cbirlib.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
