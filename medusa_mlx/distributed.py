"""Medusa on a backbone sharded across processes with ``mx.distributed``.

Tensor parallelism: mlx-lm's ``Model.shard(group)`` splits every attention and
MLP projection over the ranks; each block ends in a "sharded-to-all" linear,
an ``all_sum``, so every rank holds the *full* hidden state after every layer.
The embedding, final norm and lm_head are not sharded.

Medusa heads are therefore **replicated** on every rank rather than run on
rank 0 and broadcast: they are small, their input (the full hidden state) is
already on every rank, and the ring all-reduce hands every rank bit-identical
sums, so every rank computes the same proposals, verifies the same tree and
reaches the same acceptance decision without any extra communication. Under
sampling every rank must draw the same random numbers: :func:`agree_seed`
makes rank 0's seed everyone's.

That identity is an assumption (it holds for identical software on identical
hardware; mixed chips could round a replicated matmul differently), so
:class:`DivergenceGuard` checks it cheaply and fails loudly instead of letting
ranks drift apart. :class:`Watchdog` bounds how long a rank waits for a peer
that has stopped answering: MLX's ring backend raises promptly when a peer's
connection *closes* (the peer process exited or was killed), but waits forever
on a peer that is alive and silent (hung, stopped, or a network that dropped
without closing the socket).

Nothing here runs in a single-process run: the CLI only calls into this module
when launched by ``mlx.launch`` (or under ``--shard``).
"""

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import mlx.core as mx

from .backbone import model_type
from .model import MedusaModel, medusa_model
from .errors import DistributedError, UnsupportedModelError

# Environment variables that the launchers set in every rank they start:
# MLX_RANK (mlx.launch: ring, jaccl, nccl), OMPI_COMM_WORLD_SIZE / PMI_SIZE (mpirun).
LAUNCH_ENV = ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
WATCHDOG_EXIT_CODE = 3
_HASH_MOD = 2**31 - 1  # checksums travel as int32
_HASH_MUL = 1_000_003


def launched() -> bool:
    """True when this process was started by a distributed launcher."""
    return any(name in os.environ for name in LAUNCH_ENV)


def init_group(backend: str = "any") -> mx.distributed.Group:
    """The global group; a clear error when no distributed backend can start."""
    if not mx.distributed.is_available():
        raise DistributedError("this MLX build has no distributed backend")
    try:
        return mx.distributed.init(strict=True, backend=backend)
    except RuntimeError as e:
        raise DistributedError(f"could not join the distributed group: {e}") from e


def run_group(require: bool = False) -> Optional[mx.distributed.Group]:
    """The group to shard over when a launcher started several ranks, else None
    (a single-process run touches no distributed machinery). ``require``: refuse
    to run on one rank (``--shard``)."""
    group = init_group() if launched() else None
    if group is not None and group.size() > 1:
        return group
    if require:
        raise DistributedError(
            "--shard needs several ranks: start them with "
            "mlx.launch --backend ring -n 2 -- python -m medusa_mlx.generate ..."
        )
    return None


def rank_label(group: mx.distributed.Group) -> str:
    return f"[rank {group.rank()}/{group.size()}]"


def check_shardable(backbone, size: int) -> None:
    """Refuse, before anything is modified, what ``backbone.shard`` cannot split."""
    if not callable(getattr(backbone, "shard", None)):
        raise UnsupportedModelError(
            f"architecture '{model_type(backbone)}' cannot be sharded: its mlx-lm model "
            "has no shard() method (tensor parallelism needs one; llama, mistral, "
            "qwen2 and qwen3 have it)"
        )
    for i, layer in enumerate(backbone.layers):
        attn = getattr(layer, "self_attn", None)
        for attr, what in (("n_heads", "attention"), ("n_kv_heads", "key/value")):
            n = getattr(attn, attr, None)
            if isinstance(n, int) and n % size:
                raise UnsupportedModelError(
                    f"cannot shard '{model_type(backbone)}' over {size} ranks: layer {i} "
                    f"has {n} {what} heads, which do not divide evenly by {size}"
                )


def shard_model(model: MedusaModel, group: mx.distributed.Group) -> MedusaModel:
    """Shard ``model``'s backbone in place over ``group`` and re-wrap it.

    The heads stay replicated. The backbone's logits on a probe are compared
    before and after sharding (a wrong split would otherwise only show as
    different text), and ``medusa_model`` re-runs its own checks on the sharded model.
    Every rank must call this at the same point: the probes communicate.
    """
    size = group.size()
    if size == 1:
        return model
    backbone = model.backbone
    check_shardable(backbone, size)
    probe = mx.array([[1, 2, 3, 4]])
    before = backbone(probe)
    mx.eval(before)
    try:
        backbone.shard(group)
    except ValueError as e:
        # mx.split refuses uneven splits (e.g. an MLP width not divisible by size).
        raise UnsupportedModelError(
            f"cannot shard '{model_type(backbone)}' over {size} ranks: {e} "
            "(the backbone may be partly sharded now: reload it)"
        ) from e
    after = backbone(probe)
    scale = float(mx.abs(before).max().item()) or 1.0
    if not mx.allclose(before, after, atol=1e-4 * scale, rtol=1e-3):
        raise UnsupportedModelError(
            f"sharding '{model_type(backbone)}' over {size} ranks changed its logits "
            "(max difference {:.3g}); refusing to decode with it".format(
                float(mx.abs(before - after).max().item())
            )
        )
    return medusa_model(backbone, model.heads)


def agree_seed(seed: Optional[int], group: mx.distributed.Group) -> int:
    """Rank 0's seed (drawn at random there when ``None``) on every rank, so that
    sampling acceptors draw identical random numbers everywhere."""
    if group.rank() == 0:
        local = seed if seed is not None else int(mx.random.randint(0, _HASH_MOD, ()).item())
    else:
        local = 0
    # all_sum of (seed, 0, 0, ...) is a broadcast from rank 0.
    return int(mx.distributed.all_sum(mx.array([local], dtype=mx.int32), group=group).item())


class DivergenceGuard:
    """Every ``every`` steps (and at step 0), checks that all ranks have emitted
    exactly the same tokens so far, with one all-reduce of four int32.

    A rolling hash of (tree size, tokens) is reduced with ``all_max`` as
    ``(h, -h)``: every rank holds the same h exactly when max(h) == -max(-h)
    == its own h. Exact, unlike comparing ``all_sum(h)`` with ``size * h``.
    """

    def __init__(self, group: mx.distributed.Group, every: int = 16):
        if every < 1:
            raise ValueError("the divergence check interval must be at least 1 step")
        self.group = group
        self.every = every
        self.checksum = 0
        self.steps = 0
        self.checked_at = -1

    def update(self, tokens: list[int], tree_size: int) -> None:
        h = self.checksum
        for t in [tree_size, *tokens]:
            h = (h * _HASH_MUL + t + 1) % _HASH_MOD
        self.checksum = h
        self.steps += 1

    def check(self) -> None:
        h, s = self.checksum, self.steps
        local = mx.array([h, -h, s, -s], dtype=mx.int32)
        hi = mx.distributed.all_max(local, group=self.group).tolist()
        self.checked_at = s
        if hi != [h, -h, s, -s]:
            raise DistributedError(
                f"{rank_label(self.group)} ranks diverged after {s} steps: this rank's "
                f"token checksum is {h}, others' range over [{-hi[1]}, {hi[0]}] "
                "(different prompts, seeds, heads or model files on different ranks, "
                "or hardware that rounds the replicated layers differently)"
            )

    def __call__(self, step) -> None:
        self.update(step.tokens, step.tree_size)
        if self.steps == 1 or (self.steps - 1) % self.every == 0:
            self.check()

    def finish(self) -> None:
        """Final check, unless the last step was just checked. Ranks that stopped
        at different steps cannot meet here in step: one of them then sees a lost
        peer, a failed check, or the watchdog, never silent success."""
        if self.steps and self.checked_at != self.steps:
            self.check()


class Watchdog:
    """Aborts the process when no step completes within ``timeout`` seconds.

    A Python exception cannot interrupt a rank blocked inside an MLX collective,
    so a background thread ends the process with ``os._exit`` after printing a
    clear message. MLX releases the GIL while it waits, so the thread does run.
    """

    def __init__(self, timeout: float, label: str = "", abort: Callable[[int], None] = os._exit):
        self.timeout = timeout
        self.label = label
        self._abort = abort
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medusa-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._last = time.monotonic()
        self._thread.start()
        return self

    def kick(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            idle = time.monotonic() - self._last
            if idle > self.timeout:
                print(
                    f"error: {self.label} no decoding step completed in {idle:.0f} s "
                    f"(limit {self.timeout:g} s, --step-timeout): another rank is probably "
                    "dead or hung, and MLX's ring backend waits forever on a peer that "
                    "stops answering without closing its connection; aborting",
                    file=sys.stderr,
                    flush=True,
                )
                self._abort(WATCHDOG_EXIT_CODE)
                return


@contextmanager
def lockstep(
    group: mx.distributed.Group, check_every: int = 16, step_timeout: float = 0.0
) -> Iterator[Callable]:
    """Yield an ``on_step`` callback for ``medusa_generate_step`` (through
    ``stream_generate``/``generate`` kwargs) that keeps the ranks honest:
    the divergence guard, and a watchdog when ``step_timeout`` > 0. MLX's
    "peer lost" RuntimeError becomes a :class:`DistributedError`."""
    guard = DivergenceGuard(group, check_every)
    label = rank_label(group)
    watchdog = Watchdog(step_timeout, label).start() if step_timeout > 0 else None

    def on_step(step) -> None:
        if watchdog is not None:
            watchdog.kick()
        guard(step)

    try:
        yield on_step
        guard.finish()
    except RuntimeError as e:
        if isinstance(e, DistributedError):
            raise
        # The ring backend raises "[ring] connection to a peer was lost" when a
        # peer exits; any other failure inside a collective lands here too.
        raise DistributedError(
            f"{label} generation failed after {guard.steps} steps: {e} "
            "(another rank probably died: see its own log)"
        ) from e
    finally:
        if watchdog is not None:
            watchdog.stop()
