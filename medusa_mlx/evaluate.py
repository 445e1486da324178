"""``python -m medusa_mlx.evaluate``, as the README shows it: runs ``medusa_mlx.training.evaluate``
(also ``python -m medusa_mlx evaluate``)."""

from .training.evaluate import main

if __name__ == "__main__":
    main()
