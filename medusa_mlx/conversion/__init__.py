"""Converting Medusa heads between torch / safetensors / vLLM checkpoints and the
medusa-mlx heads format (``python -m medusa_mlx convert``), without torch."""
