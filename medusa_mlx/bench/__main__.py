"""``python -m medusa_mlx.bench`` (as documented in the README)."""

from .runs import main

main()
