"""Backbone loaders for sources mlx-lm does not read: llama2.c checkpoints, GGUF
files (weights and tokenizer) and the embedded default model. Each returns a
plain mlx-lm model and ``TokenizerWrapper``."""
