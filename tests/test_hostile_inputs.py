"""Every hostile input of ``hostile_cases.py`` in its own child process.

Each case must end with exit code 1 (130/143 for SIGINT/SIGTERM, 0 for the ``valid``
baselines), exactly one ``error:`` line and no traceback, without a signal, a hang
(60 s timeout), more than 1.2 GB resident (4 GB address-space limit), anything left at
the output path, a changed previous output, or the canary file a pickle would create.

The selected cases run up front, forked from ``HOSTILE_WORKERS`` processes that have
imported medusa-mlx once (``hostile_zygote.py``; default 2, the cores of the CI box);
each test then checks its own result, so a failure names its case.
"""

import os
import queue
from concurrent.futures import ThreadPoolExecutor

import pytest

from hostile_cases import CASES
from hostile_inputs import Zygote, problems, snapshot

BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "duplicate case names"


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    names = [item.callspec.params["name"] for item in request.session.items
             if item.module is request.module and hasattr(item, "callspec")]

    workers = max(1, min(int(os.environ.get("HOSTILE_WORKERS", "2")), len(names)))
    zygotes = queue.Queue()
    for _ in range(workers):
        zygotes.put(Zygote())

    def run(name):
        tmp = tmp_path_factory.mktemp(name.replace("/", "_")[:60])
        canary = tmp / "CANARY"
        try:
            spec = BY_NAME[name].build(tmp)
        except Exception as e:  # noqa: BLE001  (a broken builder fails its own test)
            return [f"builder failed: {type(e).__name__}: {e}"], None
        before = snapshot(spec.keep)
        zygote = zygotes.get()
        try:
            result = zygote.run(spec)
        finally:
            zygotes.put(zygote)
        return problems(spec, result, canary, before), result

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return dict(zip(names, pool.map(run, names)))
    finally:
        for _ in range(workers):
            zygotes.get().close()


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_hostile_input(outcomes, name):
    found, result = outcomes[name]
    detail = "" if result is None else (
        f"\nexit {result.code} in {result.seconds:.1f} s, peak {result.max_rss >> 20} MB"
        f"\nstderr: {result.stderr[-1500:]}\nstdout: {result.stdout[-300:]}")
    assert not found, "; ".join(found) + detail


def test_every_family_has_a_valid_baseline():
    families = {name.split("-")[0] for name in BY_NAME}
    baselines = {name.split("-")[0] for name in BY_NAME if "valid" in name}
    assert families - baselines <= {"cli", "special", "signal", "zip", "force", "inject"}, \
        families - baselines
