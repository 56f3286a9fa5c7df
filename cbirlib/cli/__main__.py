"""``python -m cbirlib.cli``: the ``cbirlib`` command."""

import sys

from cbirlib.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
