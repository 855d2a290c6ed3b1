"""``python -m toolkit.impute``: see ``toolkit.impute.cli``."""

import sys

from toolkit.impute.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
