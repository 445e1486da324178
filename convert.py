"""Convert Medusa heads to MLX: ``python convert.py --help``."""

import sys

from medusa_mlx.convert import main

if __name__ == "__main__":
    sys.exit(main())
