"""Convert Medusa heads to MLX: ``python convert.py --help``."""

import medusa_mlx  # noqa: F401  (first: preloads OpenBLAS before mlx is imported)
from medusa_mlx.conversion.convert import main

if __name__ == "__main__":
    main()
