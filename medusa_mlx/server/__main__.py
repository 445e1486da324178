"""``python -m medusa_mlx.server``."""

from .cli import main

main()
