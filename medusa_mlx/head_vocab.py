"""``python -m medusa_mlx.head_vocab``, as the README shows it: runs ``medusa_mlx.training.head_vocab``
(also ``python -m medusa_mlx head-vocab``)."""

from .training.head_vocab import main

if __name__ == "__main__":
    main()
