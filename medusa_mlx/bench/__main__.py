"""``python -m medusa_mlx.bench`` (as documented in the README)."""

from .cli import main

main()
