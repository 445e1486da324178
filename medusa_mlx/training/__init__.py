"""Training Medusa heads on a frozen backbone: self-distilled data, the trainer,
checkpoints, held-out evaluation, tree search and head vocabularies."""
