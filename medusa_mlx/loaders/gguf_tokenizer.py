"""Build an mlx-lm tokenizer from GGUF metadata, without torch.

transformers can read GGUF tokenizers itself, but that path imports torch.
For GPT-2 style byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`,
as in SmolLM2) the metadata holds everything a `tokenizers` BPE needs: the
token strings, the merges and per-token types. We rebuild the tokenizer from
those, wrap it in `PreTrainedTokenizerFast` (for `apply_chat_template`) and
then in mlx-lm's `TokenizerWrapper` (for streaming detokenization and EOS ids).
"""

from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper

# llama.cpp token types (gguf.TokenType).
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Chat end markers that should stop generation when the chat template uses them.
CHAT_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def _metadata_int(metadata: dict, key: str) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    return int(value.item()) if hasattr(value, "item") else int(value)


def _build_backend(tokens: list[str], merges: list[str], token_types: list[int]):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's byte-level BPE."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    vocab = {token: index for index, token in enumerate(tokens)}
    merge_pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    backend = Tokenizer(BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False, byte_fallback=False))
    # Digits one by one, then the GPT-2 regex split on bytes mapped to unicode
    # (llama.cpp's "smollm" pre-tokenizer; HF SmolLM2's tokenizer.json does the same).
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|> ...) and user-defined tokens must match as
    # whole strings in text instead of going through BPE.
    added = [
        AddedToken(token, special=kind == TOKEN_TYPE_CONTROL, normalized=False)
        for token, kind in zip(tokens, token_types)
        if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
    ]
    backend.add_tokens(added)
    return backend


def eos_token_ids(metadata: dict, tokens: list[str], chat_template: str | None) -> list[int]:
    """EOS, EOT, and the chat template's end-of-turn token (e.g. `<|im_end|>`)."""
    ids = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        token_id = _metadata_int(metadata, key)
        if token_id is not None:
            ids.append(token_id)
    if chat_template:
        index = {token: i for i, token in enumerate(tokens) if token in CHAT_END_TOKENS}
        ids.extend(index[t] for t in CHAT_END_TOKENS if t in index and t in chat_template)
    return sorted(set(ids))


def load_gguf_tokenizer(metadata: dict) -> TokenizerWrapper:
    """An mlx-lm TokenizerWrapper for a GGUF file's byte-level BPE tokenizer."""
    from transformers import PreTrainedTokenizerFast

    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"unsupported GGUF tokenizer model {kind!r}: only byte-level BPE ('gpt2') is supported"
        )
    tokens = list(metadata["tokenizer.ggml.tokens"])
    merges = list(metadata.get("tokenizer.ggml.merges", []))
    token_types = metadata.get("tokenizer.ggml.token_type")
    token_types = token_types.tolist() if token_types is not None else [TOKEN_TYPE_NORMAL] * len(tokens)
    chat_template = metadata.get("tokenizer.chat_template")

    def token_for(key: str) -> str | None:
        token_id = _metadata_int(metadata, f"tokenizer.ggml.{key}_token_id")
        return tokens[token_id] if token_id is not None and token_id < len(tokens) else None

    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_build_backend(tokens, merges, token_types),
        bos_token=token_for("bos"),
        eos_token=token_for("eos"),
        unk_token=token_for("unknown"),
        pad_token=token_for("padding"),
        add_bos_token=bool(add_bos.item()) if add_bos is not None else False,
        add_eos_token=False,
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
    )
    return TokenizerWrapper(
        hf_tokenizer,
        BPEStreamingDetokenizer,
        eos_token_ids=eos_token_ids(metadata, tokens, chat_template),
    )
