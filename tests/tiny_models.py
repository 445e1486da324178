"""Tiny random mlx-lm models of several architectures, built in-process
(the way mlx-lm's own tests build them)."""

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import _get_classes

VOCAB = 128

_COMMON = dict(
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    vocab_size=VOCAB,
    max_position_embeddings=1024,
)

CONFIGS = {
    "llama": dict(model_type="llama", tie_word_embeddings=False),
    "mistral": dict(model_type="mistral", tie_word_embeddings=False, rope_theta=1e6),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", tie_word_embeddings=True, head_dim=16, rope_theta=1e6),
    "gemma": dict(model_type="gemma", head_dim=16),
    "phi3": dict(model_type="phi3"),
}

ARCHITECTURES = list(CONFIGS)


def tiny_model(arch: str, seed: int = 0, quantize_bits: int = 0, **overrides) -> nn.Module:
    config = {**_COMMON, **CONFIGS[arch], **overrides}
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    # Larger-than-default weights give peaked, varied next-token distributions,
    # so greedy runs do not collapse into one repeated token.
    from mlx.utils import tree_map

    model.update(tree_map(lambda p: p * 2.0 if p.ndim == 2 else p, model.parameters()))
    if quantize_bits:
        nn.quantize(model, group_size=32, bits=quantize_bits)
    mx.eval(model.parameters())
    return model


def greedy_sequences(backbone: nn.Module, count: int, new_tokens: int = 40, seed: int = 0):
    """Greedy continuations of ``count`` random 4-token prompts, as the trainer
    builds its sequences (each next token is the argmax of a full forward)."""
    import numpy as np

    from medusa_mlx.backbone import split_backbone
    from medusa_mlx.training.data import TokenSequence

    rng = np.random.default_rng(seed)
    body, lm_head = split_backbone(backbone)
    sequences = []
    for _ in range(count):
        tokens = rng.integers(0, VOCAB, 4).tolist()
        start = len(tokens) - 1
        for _ in range(new_tokens):
            tokens.append(int(mx.argmax(lm_head(body(mx.array([tokens])))[0, -1])))
        sequences.append(TokenSequence(tokens, start))
    return sequences


def partial_oracle(truth: list, seed: int, vocab: int = VOCAB, depth: int = 3):
    """Heads that know the greedy continuation but are wrong at random nodes: at
    each depth the true token is ranked first (p=0.5), second (p=0.3) or not at
    all (p=0.2), under a fixed seed. Runs with it accept at several depths, reject,
    and accept down non-first branches (which moves keys in the cache)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def propose(hidden, history):
        rows = []
        for d in range(depth):
            pos = len(history) + d
            true = truth[pos] if pos < len(truth) else 0
            wrong = [(true + r) % vocab for r in range(1, 11)]
            rank = rng.choice(3, p=[0.5, 0.3, 0.2])
            rows.append(wrong[:rank] + [true] + wrong[rank:9] if rank < 2 else wrong)
        return mx.array(rows)

    return propose
