"""``python -m medusa_mlx.chat``."""

from .cli import main

main()
