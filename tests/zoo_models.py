"""A tiny random model of every architecture in the installed ``mlx_lm/models/``.

``zoo_architectures()`` walks the package (so a new mlx-lm release brings its new
architectures into the test by itself); ``zoo_model(arch)`` builds one from a
generic argument set (small sizes for every field name the models use) plus the
per-architecture overrides below, which exist only where the generic set cannot
describe a consistent model. Modules that cannot even be imported here (a missing
third-party package) are reported by ``zoo_model`` as ``ZooSkip``.
"""

import dataclasses
import importlib
import pkgutil

import mlx.core as mx
import mlx.nn as nn
import mlx_lm.models
from mlx.utils import tree_flatten, tree_map
from tiny_models import partial_oracle

VOCAB = 128
MAX_PARAMETERS = 10_000_000
HIDDEN = 64

# Every size-like field name the model files use, at a tiny size. Applied whether
# or not the field has a default (defaults are sized for real models).
GENERIC = dict(
    vocab_size=VOCAB, hidden_size=HIDDEN, d_model=HIDDEN, n_embd=HIDDEN, dim=HIDDEN,
    model_dim=HIDDEN, block_dim=HIDDEN, hidden_dim=128,
    num_hidden_layers=2, n_layers=2, n_layer=2, num_layers=2, num_transformer_layers=2,
    intermediate_size=128, mlp_hidden_size=128, ffn_hidden_size=128, n_inner=128,
    ff_intermediate_size=128, intermediate_size_mlp=128, embedding_size=VOCAB,
    num_attention_heads=4, n_heads=4, n_head=4, num_heads=4,
    num_key_value_heads=2, n_kv_heads=2, num_kv_heads=2, multi_query_group_num=2,
    head_dim=16, kv_channels=16,
    rms_norm_eps=1e-5, layer_norm_eps=1e-5, layer_norm_epsilon=1e-5, norm_eps=1e-5,
    layernorm_epsilon=1e-5, norm_epsilon=1e-5,
    max_position_embeddings=1024, n_positions=1024, n_ctx=1024, seq_length=1024,
    model_max_length=1024, max_seq_len=1024,
    rope_theta=10000.0, rotary_emb_base=10000,
    num_experts=4, n_routed_experts=4, num_local_experts=4, moe_num_experts=4,
    num_experts_per_tok=2, moe_topk=2, top_k=2, n_group=1, topk_group=1,
    moe_intermediate_size=32, expert_ffn_hidden_size=32, shared_expert_intermediate_size=32,
    shared_intermediate_size=32, moe_shared_expert_intermediate_size=32,
    n_shared_experts=1, num_shared_experts=1, num_shared_expert=1,
    first_k_dense_replace=1, moe_layer_freq=1, decoder_sparse_step=1,
    kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
    routed_scaling_factor=1.0, norm_topk_prob=True, topk_method="noaux_tc",
    scoring_func="sigmoid",
)

# Fields without a default whose name is not a size: the most ordinary value.
REQUIRED_ONLY = dict(
    attention_bias=False, mlp_bias=False, use_bias=False, use_qkv_bias=False,
    use_conv_bias=False, conv_bias=False, tie_word_embeddings=False,
    partial_rotary_factor=1.0, rotary_pct=1.0, mlp_only_layers=[], layer_types=None,
    logits_scaling=1.0, attention_multiplier=0.25, embedding_multiplier=1.0,
    residual_multiplier=1.0, scale_emb=1.0, scale_depth=1.0, dim_model_base=HIDDEN,
    use_qk_norm=False, qk_norm=False, post_norm=False, hidden_act="silu",
)

# Wrappers whose ``text_config`` is another argument class: (module, class name).
TEXT_ARGS = {
    "gemma3": ("gemma3_text", "ModelArgs"), "gemma3n": ("gemma3n", "TextConfig"),
    "kimi_k25": ("deepseek_v3", "ModelArgs"), "kimi_k3": ("kimi_k3", "TextArgs"),
    "kimi_vl": ("kimi_vl", "TextArgs"), "lfm2-vl": ("lfm2", "ModelArgs"),
    "llama4": ("llama4", "TextArgs"), "minimax_m3_vl": ("minimax_m3_vl", "TextArgs"),
    "mistral3": ("ministral3", "ModelArgs"), "muse_spark": ("muse_spark", "TextArgs"),
    "qwen3_vl": ("qwen3", "ModelArgs"), "qwen3_vl_moe": ("qwen3_moe", "ModelArgs"),
    "qwen2_vl": ("qwen2", "ModelArgs"), "pixtral": ("llama", "ModelArgs"),
    "gemma4": ("gemma4_text", "ModelArgs"), "qwen3_5": ("qwen3_5", "TextModelArgs"), "qwen3_5_moe": ("qwen3_5", "TextModelArgs"),
}
TWO_FULL = ["full_attention", "full_attention"]
SLIDING_FULL = ["sliding_attention", "full_attention"]
ROPE_PARAMETERS = dict(rope_theta=10000.0, rope_type="default", llama_4_scaling_beta=0.1,
                       original_max_position_embeddings=1024)

# Architectures the generic set cannot describe consistently (list-valued layer
# plans, nested configs, rope dictionaries the model reads keys from).
OVERRIDES: dict[str, dict] = {
    "afmoe": dict(layer_types=TWO_FULL, num_dense_layers=1, mup_enabled=False),
    "baichuan_m1": dict(sliding_window_layers=[], sliding_window=16, conv_window=2),
    "cohere2": dict(sliding_window_pattern=2, sliding_window=16),
    "dbrx": dict(ffn_config=dict(ffn_hidden_size=128, moe_num_experts=4, moe_top_k=2),
                 attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0)),
    "deepseek_v2": dict(rope_scaling=dict(type="yarn", factor=1.0, mscale=1.0, mscale_all_dim=0,
                                          original_max_position_embeddings=1024)),
    "gemma3": dict(sliding_window_pattern=2, sliding_window=16),
    "gemma3_text": dict(sliding_window_pattern=2, sliding_window=16),
    "gemma3n": dict(layer_types=SLIDING_FULL, num_kv_shared_layers=0, sliding_window=16,
                    activation_sparsity_pattern=[0.0, 0.0], hidden_size_per_layer_input=8,
                    vocab_size_per_layer_input=VOCAB, altup_num_inputs=2, altup_active_idx=0,
                    altup_coef_clip=120.0, laurel_rank=8, final_logit_softcapping=30.0,
                    rope_local_base_freq=10000.0),
    "gemma4": dict(layer_types=SLIDING_FULL, sliding_window=16, num_kv_shared_layers=0,
                   global_head_dim=16, vocab_size_per_layer_input=VOCAB,
                   hidden_size_per_layer_input=8),
    "gemma4_text": dict(layer_types=SLIDING_FULL, sliding_window=16, num_kv_shared_layers=0,
                        global_head_dim=16, vocab_size_per_layer_input=VOCAB,
                        hidden_size_per_layer_input=8),
    "glm_moe_dsa": dict(rope_parameters=ROPE_PARAMETERS, index_head_dim=16, index_n_heads=2,
                        index_topk=4),
    "afm7": dict(num_kv_reuse_layers=1),
    "exaone_moe": dict(layer_types=TWO_FULL, is_moe_layer=[False, True]),
    "nemotron-nas": dict(block_configs=[dict(attention=dict(n_heads_in_group=2),
                                             ffn=dict(ffn_mult=2.0))] * 2),
    "gptj": dict(rotary_dim=8),  # partial rotary: 8 of 16 dims
    "phixtral": dict(rotary_dim=8),
    "granitemoehybrid": dict(layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_head=16,
                             mamba_proj_bias=False, mamba_d_state=8, mamba_d_conv=4,
                             mamba_n_groups=1, mamba_conv_bias=True),
    "hunyuan": dict(rope_scaling=dict(alpha=1.0, factor=1.0, type="dynamic")),
    "jamba": dict(attn_layer_offset=1, attn_layer_period=2, expert_layer_offset=1,
                  expert_layer_period=2, mamba_d_conv=4, mamba_d_state=8, mamba_expand=2),
    "kimi_linear": dict(linear_attn_config=dict(kda_layers=[1], full_attn_layers=[2], num_heads=4,
                                                head_dim=16, short_conv_kernel_size=4)),
    "kimi_k3": dict(num_experts_per_token=2, routed_expert_hidden_size=32, linear_attn_config=dict(kda_layers=[1], full_attn_layers=[2], num_heads=4,
                                            head_dim=16, short_conv_kernel_size=4)),
    "lfm2": dict(layer_types=["conv", "full_attention"], conv_L_cache=3),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], conv_L_cache=3),
    "lfm2-vl": dict(layer_types=["conv", "full_attention"], conv_L_cache=3),
    "llama4": dict(num_experts_per_tok=1, num_hidden_layers=4, no_rope_layers=[1] * 4, attention_chunk_size=16, interleave_moe_layer_step=1),
    "llama4_text": dict(no_rope_layers=[1, 1], attention_chunk_size=16),
    "longcat_flash": dict(mla_scale_q_lora=True, mla_scale_kv_lora=True,
                          zero_expert_type="identity"),
    "longcat_flash_ngram": dict(mla_scale_q_lora=True, mla_scale_kv_lora=True,
                                zero_expert_type="identity"),
    "mamba2": dict(time_step_limit=(0.0, float("inf")), n_groups=1, state_size=8),
    "mellum": dict(layer_types=TWO_FULL, rope_parameters=dict(full_attention=ROPE_PARAMETERS)),
    "mimo_v2_flash": dict(hybrid_layer_pattern=[1, 0], moe_layer_freq=[0, 1]),
    "minicpm3": dict(rope_scaling=dict(original_max_position_embeddings=1024,
                                       short_factor=[1.0] * 4, long_factor=[1.0] * 4)),
    "ministral3": dict(rope_parameters=ROPE_PARAMETERS),
    "mistral3": dict(rope_parameters=ROPE_PARAMETERS),
    "mistral4": dict(rope_parameters=ROPE_PARAMETERS),
    "muse_spark": dict(layer_types=TWO_FULL, layer_rope_theta=[10000.0, 10000.0],
                       num_shared_experts=0, rope_parameters=dict(rope_theta=10000.0), final_logit_softcapping=30.0, output_multiplier=1.0,
                       moe_hidden_size=32, post_norm_eps=1e-5, sliding_window=16),
    "minimax_m3_vl": dict(moe_layer_freq=[1, 1]),
    "plamo": dict(n_shared_head=2),
    "prism_hadamard_qwen35": dict(schema_version=1, tensor_namespace="mlx-lm-text"),
    "qwen3_next": dict(full_attention_interval=2),
    "qwen3_5": dict(full_attention_interval=2),
    "qwen3_5_moe": dict(full_attention_interval=2),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"], attention_window_size=16),
    "spark2_5": dict(rope_parameters=dict(sliding_attention=ROPE_PARAMETERS,
                                          full_attention=ROPE_PARAMETERS)),
    "step3p5": dict(moe_top_k=2),
    "nemotron_h": dict(hybrid_override_pattern="M*"),
    "olmo3": dict(layer_types=SLIDING_FULL, sliding_window=16),
    "openelm": dict(num_query_heads=[4, 4], num_kv_heads=[2, 2], ffn_multipliers=[2.0, 2.0]),
}


def zoo_architectures() -> list[str]:
    names = []
    for info in pkgutil.iter_modules(mlx_lm.models.__path__):
        spec_path = f"{mlx_lm.models.__path__[0]}/{info.name}.py"
        try:
            with open(spec_path) as f:
                source = f.read()
        except OSError:
            continue
        if "class Model(" in source and "class ModelArgs" in source:
            names.append(info.name)
    return sorted(names)


class ZooSkip(Exception):
    """No tiny model of this architecture can run on this machine."""


# Architectures no tiny model of which runs here, and why.
SKIP = {
    "bitnet": "its BitLinear layers run a Metal kernel only (no CPU back-end)",
    "muse_spark": "its fused qk-norm + RoPE runs a Metal kernel only (no CPU back-end)",
    "phi3small": "building and probing it crashed MLX 0.32.4 on CPU (segmentation fault, "
                 "also during garbage collection); attach_heads refuses it by name",
    "prism_hadamard_qwen35": "a 2-bit Hadamard weight pack of qwen3_5 (groups of 128 weights: "
                             "no tiny model; qwen3_5 itself is in the zoo)",
}


def _module(arch: str):
    if arch in SKIP:
        raise ZooSkip(SKIP[arch])
    try:
        return importlib.import_module(f"mlx_lm.models.{arch}")
    except (ImportError, SystemExit) as e:  # olmo calls sys.exit() without hf_olmo
        raise ZooSkip(f"mlx_lm.models.{arch} does not import here ({type(e).__name__})") from None


def _default_for(field: dataclasses.Field):
    text = str(field.type)
    if text.startswith("typing.Optional") or "None" in text:
        return None
    for words, value in ((("Dict", "dict"), {}), (("List", "list", "Tuple"), []),
                         (("bool",), False), (("int",), 2), (("float",), 1.0)):
        if any(w in text for w in words):
            return value
    return None


def _fill(args_class, name: str) -> dict:
    """The generic set for every field of ``args_class`` + the overrides of ``name``."""
    config = {}
    for f in dataclasses.fields(args_class):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name in GENERIC:
            config[f.name] = GENERIC[f.name]
        elif required and f.name in REQUIRED_ONLY:
            config[f.name] = REQUIRED_ONLY[f.name]
        elif required:
            config[f.name] = _default_for(f)
    config["model_type"] = name
    config.update(OVERRIDES.get(name, {}))
    return config


def zoo_config(arch: str) -> dict:
    config = _fill(_module(arch).ModelArgs, arch)
    if arch in TEXT_ARGS:
        module, class_name = TEXT_ARGS[arch]
        config["text_config"] = _fill(getattr(_module(module), class_name), module)
        config["text_config"].update(OVERRIDES.get(arch, {}))
    return config


def zoo_model(arch: str, seed: int = 0) -> nn.Module:
    module = _module(arch)
    config = zoo_config(arch)
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    size = sum(p.size for _, p in tree_flatten(model.parameters()))
    if size > MAX_PARAMETERS:  # still lazy: nothing allocated yet
        raise ValueError(f"{arch}: the zoo config has {size:,} parameters, not a tiny model")
    # Larger-than-default weights give peaked, varied next-token distributions
    # (as tiny_models does), so greedy runs do not collapse into one token.
    model.update(tree_map(lambda p: p * 2.0 if p.ndim == 2 else p, model.parameters()))
    mx.eval(model.parameters())
    return model


# ---------------------------------------------------------------- classification

PROMPTS = ([1, 5, 9, 17, 33, 2, 64], [3, 70, 11, 100, 42])
TREES = ("chain-3", "tree-16")
NEW_TOKENS = 64
HEADS_TOKENS = 16


def plain_greedy(backbone: nn.Module, prompt: list, n: int) -> list:
    from mlx_lm.generate import generate_step

    return [t for t, _ in generate_step(mx.array(prompt), backbone, max_tokens=n)]


@dataclasses.dataclass
class ZooOutcome:
    arch: str
    supported: bool
    reason: str = ""  # the one-line refusal, or the skip reason
    skipped: bool = False
    depths: tuple = ()  # distinct accepted lengths seen (partial oracle runs)
    rejections: int = 0  # steps that accepted less than the tree's depth
    moved: int = 0  # compactions that moved a non-first branch's keys
    shardable: bool = False


def classify(arch: str) -> ZooOutcome:
    """Build the tiny model, attach heads and decode; or return the refusal.
    Raises ``AssertionError`` when Medusa greedy differs from mlx-lm greedy."""
    from unittest import mock

    generate_module = importlib.import_module("medusa_mlx.generate")
    from medusa_mlx.attention import compact_cache
    from medusa_mlx.distributed import check_shardable
    from medusa_mlx.errors import UnsupportedModelError
    from medusa_mlx.model import attach_heads
    from medusa_mlx.tree import tree_from_spec

    try:
        backbone = zoo_model(arch)
    except ZooSkip as e:
        return ZooOutcome(arch, False, str(e), skipped=True)
    try:
        model = attach_heads(backbone, num_heads=3, shared_lm_head=True, seed=1)
    except UnsupportedModelError as e:
        return ZooOutcome(arch, False, str(e))
    outcome = ZooOutcome(arch, True)
    depths = set()

    def spy(caches, prefix_len, keep):
        outcome.moved += keep != list(range(len(keep)))
        return compact_cache(caches, prefix_len, keep)

    for p, prompt in enumerate(PROMPTS):
        ref = plain_greedy(backbone, prompt, NEW_TOKENS)
        for t, tree in enumerate(TREES):
            with mock.patch.object(generate_module, "compact_cache", spy):
                steps = list(generate_module.medusa_generate_step(
                    prompt, model, max_tokens=NEW_TOKENS, tree=tree,
                    proposer=partial_oracle(prompt + ref, seed=10 * p + t)))
            got = [tok for s in steps for tok in s.tokens]
            assert got == ref, f"{arch} {tree} prompt {p}: Medusa greedy != mlx-lm greedy"
            full = tree_from_spec(tree, 3).depth
            depths |= {s.accepted for s in steps[1:-1]}
            outcome.rejections += sum(s.accepted < full for s in steps[1:-1])
        if p == 0:  # the heads themselves, drafting through the backbone's own output
            # path: once per architecture (random heads accept almost nothing, so
            # every token costs a 16-node verification and more adds no coverage).
            got = [tok for s in generate_module.medusa_generate_step(
                prompt, model, max_tokens=HEADS_TOKENS, tree="tree-16") for tok in s.tokens]
            assert got == ref[:HEADS_TOKENS], f"{arch} heads: Medusa greedy != mlx-lm greedy"
    outcome.depths = tuple(sorted(depths))
    try:
        check_shardable(backbone, 2)
        outcome.shardable = True
    except UnsupportedModelError as e:
        outcome.reason = str(e)
    return outcome


def release() -> None:
    """Free one architecture's arrays before the next is built (a long run of
    models in one process crashed in MLX twice on this shared box without it)."""
    import gc

    gc.collect()
    mx.clear_cache()
