"""``python -m medusa_mlx.tree_search``, as the README shows it: runs ``medusa_mlx.training.tree_search``
(also ``python -m medusa_mlx tree-search``)."""

from .training.tree_search import main

if __name__ == "__main__":
    main()
