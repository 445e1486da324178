"""Medusa on a backbone sharded over 2 ranks (mx.distributed ring on 127.0.0.1).

Each rank is a subprocess running tests/dist_rank.py (bounded by a timeout) and
writes its own result file: mlx.launch exits 0 even when every rank failed, so
the ranks' files are what is checked. Fault tests start the ranks directly
(the environment mlx.launch would give them) because mlx.launch SIGTERMs the
surviving ranks as soon as one exits non-zero, which would hide what the
survivor itself does.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step

from medusa_mlx import distributed
from medusa_mlx.errors import UnsupportedModelError
from medusa_mlx.load import load_backbone
from medusa_mlx.model import attach_heads
from tiny_models import tiny_model

pytestmark = pytest.mark.skipif(
    not mx.distributed.is_available(), reason="this MLX build has no distributed backend"
)

REPO = Path(__file__).resolve().parents[1]
RANK_SCRIPT = Path(__file__).parent / "dist_rank.py"
PROMPT = [1, 5, 9, 17, 33, 2, 64]
RUN_TIMEOUT = 150  # seconds per launch: startup is slow on a busy 2-core machine


def free_port_pair() -> int:
    """A port p with p and p+1 free on 127.0.0.1 (mlx.launch uses consecutive ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def rank_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCH_ENV}
    # Two ranks share two cores: one BLAS thread each avoids oversubscription.
    env.update(PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1", **extra)
    return env


def read_results(out: Path, size: int) -> list[dict]:
    results = []
    for r in range(size):
        path = out / f"rank{r}.json"
        assert path.exists(), f"rank {r} wrote no result file"
        results.append(json.loads(path.read_text()))
    return results


def launch_with_mlx(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        "mlx.launch", "--backend", "ring", "-n", "2", "--starting-port", str(free_port_pair()),
        "--", sys.executable, str(RANK_SCRIPT), "--out", str(out), *args,
    ]
    return subprocess.run(
        cmd, env=rank_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=REPO
    )


def start_ranks(tmp_path: Path, out: Path, *args: str) -> list[subprocess.Popen]:
    """Both ranks, started directly with the environment mlx.launch gives them."""
    port = free_port_pair()
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    cmd = [sys.executable, str(RANK_SCRIPT), "--out", str(out), *args]
    return [
        subprocess.Popen(
            cmd, env=rank_env(MLX_RANK=str(r), MLX_HOSTFILE=str(hostfile)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )
        for r in range(2)
    ]


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"rank (pid {proc.pid}) still running after {timeout} s:\n{err}")
    return proc.returncode, err


def plain_greedy(backbone, prompt, n):
    return [t for t, _ in generate_step(mx.array(prompt), backbone, max_tokens=n)]


@pytest.fixture
def out(tmp_path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


# --- 2 ranks: token-identical to single-process plain greedy --------------------------


@pytest.mark.parametrize("model", ["tiny", "stories260K"])
def test_sharded_medusa_greedy_equals_single_process_greedy(model, out, shared_dir):
    if model == "tiny":
        spec, prompt, n = "tiny", PROMPT, 80
        reference = plain_greedy(tiny_model("llama", seed=0), prompt, n)
    else:
        spec = str(shared_dir / "data" / "stories260K.bin")
        backbone, tokenizer, _ = load_backbone(spec)
        prompt, n = tokenizer.encode("Once upon a time"), 120
        reference = plain_greedy(backbone, prompt, n)
    assert len(set(reference)) > 5, "degenerate reference: the test would be weak"
    # Partially-right heads: the sharded tree verification accepts at several
    # depths and rejects, so more than the root path is checked.
    proc = launch_with_mlx(out, "--model", spec, "--prompt", ",".join(map(str, prompt)),
                           "--max-tokens", str(n), "--tree", "tree-16", "--partial-oracle", "3")
    results = read_results(out, 2)
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r}: {res['error']}\n{proc.stderr}"
        assert res["size"] == 2
        assert res["tokens"] == reference, f"rank {r} differs from single-process greedy"
        assert len({a for a in res["accepted"] if a > 0}) >= 2 and min(res["accepted"]) < 4, res


def test_sharded_context_drafter_greedy_equals_single_process_greedy(out):
    """A context drafter stays replicated: every rank drafts from the same
    (all-reduced) features with its own drafter cache, so the ranks agree."""
    reference = plain_greedy(tiny_model("llama", seed=0), PROMPT, 80)
    proc = launch_with_mlx(out, "--drafter", "--max-tokens", "80", "--tree", "tree-16",
                           "--check-every", "1")
    for r, res in enumerate(read_results(out, 2)):
        assert "error" not in res, f"rank {r}: {res['error']}\n{proc.stderr}"
        assert res["size"] == 2 and res["tokens"] == reference, f"rank {r} differs"
        assert any(a > 0 for a in res["accepted"]), res  # drafted tokens were verified


def test_sharded_sampling_equals_a_single_process_run_at_the_same_seed(out, tmp_path):
    """Lossless sampling: rank 0's seed is everyone's, so the ranks agree, and with
    the same seed the sharded run samples what one process samples (partially-right
    heads, so accepted and rejected guesses both draw from the generator)."""
    args = ("--temp", "1.0", "--seed", "7", "--max-tokens", "40", "--partial-oracle", "5")
    launch_with_mlx(out, *args, "--check-every", "1")
    a, b = read_results(out, 2)
    assert "error" not in a and "error" not in b, (a.get("error"), b.get("error"))
    assert a["tokens"] == b["tokens"]
    alone = tmp_path / "alone"
    alone.mkdir()
    subprocess.run([sys.executable, str(RANK_SCRIPT), "--out", str(alone), *args], env=rank_env(),
                   capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=REPO, check=True)
    single = read_results(alone, 1)[0]
    assert single["size"] == 1 and single["tokens"] == a["tokens"]
    assert any(x > 0 for x in a["accepted"]), a


# --- failures are loud and bounded -----------------------------------------------------


def test_divergent_ranks_raise_a_clear_error(tmp_path, out):
    """Each rank keeping its own sampling seed (the bug agree_seed prevents)."""
    procs = start_ranks(tmp_path, out, "--temp", "1.0", "--max-tokens", "40",
                        "--unshared-seeds", "--check-every", "2")
    for p in procs:
        finish(p, RUN_TIMEOUT)
    for res in read_results(out, 2):
        assert "ranks diverged" in res.get("error", ""), res


def test_dead_peer_makes_the_survivor_fail_fast(tmp_path, out):
    """MLX's ring backend raises as soon as a peer's connection closes; the
    survivor reports it as a DistributedError (no watchdog needed here)."""
    procs = start_ranks(tmp_path, out, "--max-tokens", "200", "--die-after", "5")
    code1, _ = finish(procs[1], RUN_TIMEOUT)
    died = time.monotonic()
    code0, err0 = finish(procs[0], 30)
    waited = time.monotonic() - died
    assert code1 == 1
    result = json.loads((out / "rank0.json").read_text())
    assert code0 == 1 and "another rank probably died" in result["error"], (result, err0)
    assert "connection to a peer was lost" in result["error"]
    assert waited < 30, waited


def test_hung_peer_is_bounded_by_the_watchdog(tmp_path, out):
    """A peer that stays alive but silent blocks MLX's ring collectives forever;
    the watchdog ends the waiting rank (and the hung one) after --step-timeout."""
    timeout = 8.0  # generous: this 2-core machine is shared, a rank can stall seconds
    procs = start_ranks(tmp_path, out, "--max-tokens", "200", "--hang-after", "5",
                        "--step-timeout", str(timeout))
    code0, err0 = finish(procs[0], RUN_TIMEOUT)
    stopped = time.monotonic()
    # The hung rank's own watchdog (3x --step-timeout in dist_rank.py, so that rank
    # 0's fires first) ends it; the slack covers a shared, busy 2-core machine.
    bound = 3 * timeout + 30
    code1, err1 = finish(procs[1], bound)
    assert code0 == distributed.WATCHDOG_EXIT_CODE, err0
    assert "[rank 0/2] no decoding step completed" in err0
    assert "another rank is probably dead or hung" in err0
    assert not (out / "rank0.json").exists()  # aborted, not finished
    # The hung rank ends too: its own watchdog, or (when rank 0 exits first and
    # it was inside a collective) the lost-peer error.
    lost = out / "rank1.json"
    assert code1 == distributed.WATCHDOG_EXIT_CODE or (
        code1 == 1 and "another rank probably died" in json.loads(lost.read_text())["error"]
    ), err1[-2000:]
    assert time.monotonic() - stopped < bound


def test_watchdog_fires_only_without_progress():
    # Kicks 0.1 s apart against a 2 s timeout: a busy shared machine may delay a
    # kick by a second and the watchdog must still stay quiet.
    fired = []
    dog = distributed.Watchdog(2.0, "[rank 0/2]", abort=fired.append).start()
    for _ in range(10):
        time.sleep(0.1)
        dog.kick()
    assert fired == []
    deadline = time.monotonic() + 30  # then no kicks: it fires (2 s + polling + load)
    while not fired and time.monotonic() < deadline:
        time.sleep(0.1)
    dog.stop()
    assert fired == [distributed.WATCHDOG_EXIT_CODE]


# --- refusals (in-process, no group needed) --------------------------------------------


@pytest.mark.parametrize("arch", ["gemma", "phi3"])
def test_architectures_without_shard_are_refused(arch):
    with pytest.raises(UnsupportedModelError, match="has no shard\\(\\) method"):
        distributed.check_shardable(tiny_model(arch), 2)


def test_heads_that_do_not_divide_are_refused():
    # 4 attention heads, 2 key/value heads: 3 ranks cannot split them.
    with pytest.raises(UnsupportedModelError, match="do not divide evenly by 3"):
        distributed.check_shardable(tiny_model("llama"), 3)
    distributed.check_shardable(tiny_model("llama"), 2)


def test_single_rank_group_leaves_the_model_alone():
    group = mx.distributed.init()  # not launched: the singleton group
    assert group.size() == 1
    model = attach_heads(tiny_model("llama"), num_heads=2)
    assert distributed.shard_model(model, group) is model


# --- the CLI under mlx.launch ----------------------------------------------------------


def test_cli_under_mlx_launch_prints_once_and_matches_single_process(shared_dir, tmp_path):
    model = str(shared_dir / "data" / "stories260K.bin")
    cli = [sys.executable, "-m", "medusa_mlx.generate", "--model", model,
           "--prompt", "Once upon a time", "--max-tokens", "60"]
    single = subprocess.run(cli, env=rank_env(), capture_output=True, text=True,
                            timeout=RUN_TIMEOUT, cwd=REPO)
    assert single.returncode == 0, single.stderr
    launch = ["mlx.launch", "--backend", "ring", "-n", "2",
              "--starting-port", str(free_port_pair()), "--", *cli]
    multi = subprocess.run(launch, env=rank_env(), capture_output=True, text=True,
                           timeout=RUN_TIMEOUT, cwd=REPO)
    assert "error" not in multi.stderr.lower(), multi.stderr
    text = single.stdout.split("\nGeneration:")[0]
    assert len(text) > 40
    # Only rank 0 prints: the text appears once, identical to the single run.
    assert multi.stdout.split("\nGeneration:")[0] == text, multi.stdout
    assert multi.stdout.count("Generation:") == 1


def test_shard_flag_without_ranks_is_a_clear_error(shared_dir):
    cmd = [sys.executable, "-m", "medusa_mlx.generate", "--model",
           str(shared_dir / "data" / "stories260K.bin"), "--shard", "--max-tokens", "5"]
    res = subprocess.run(cmd, env=rank_env(), capture_output=True, text=True,
                         timeout=RUN_TIMEOUT, cwd=REPO)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: --shard needs several ranks")
