"""``python -m medusa_mlx.train``, as the README shows it: runs ``medusa_mlx.training.cli``
(also ``python -m medusa_mlx train``)."""

from .training.cli import main

if __name__ == "__main__":
    main()
