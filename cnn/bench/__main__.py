"""``python -m cnn.bench``: see cnn.bench.cli."""
import sys

from cnn.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
