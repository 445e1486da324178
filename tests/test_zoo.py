"""Every architecture in the installed mlx_lm/models/: Medusa greedy is
token-identical to mlx-lm greedy, or attach_heads refuses it in one line naming
the architecture. Any other exception fails.

Each supported architecture decodes 2 prompts x 64 tokens with chain-3 and tree-16
under partially-right heads (accepted depths, rejections and non-first-branch
compactions asserted non-zero) and 16 tokens with its random heads on tree-16
(drafting through the backbone's own output path; once, since random heads accept
almost nothing and more tokens only repeat the same 16-node verification).
The whole file: 60 s of CPU (45 s user + 15 s system) for 125 architectures,
252 s wall on the shared 2-core box at load average 19-20 (OpenBLAS).

With MEDUSA_ZOO_TABLE=path each outcome is also appended to that JSON-lines file
(one write per line, so parallel workers may share it; the last line per
architecture wins); ``python scripts/zoo_table.py path`` turns it into the README
table."""

import dataclasses
import json
import os

import pytest

from zoo_models import classify, release, zoo_architectures


@pytest.mark.parametrize("arch", zoo_architectures())
def test_zoo_architecture(arch):
    try:
        outcome = classify(arch)
    finally:
        release()
    table = os.environ.get("MEDUSA_ZOO_TABLE")
    if table:
        with open(table, "a") as f:
            f.write(json.dumps(dataclasses.asdict(outcome)) + "\n")
    if outcome.skipped:
        pytest.skip(outcome.reason)
    if not outcome.supported:
        assert f"'{arch}'" in outcome.reason and "\n" not in outcome.reason, outcome.reason
        # Every architecture whose layers all use the plain KVCache is supported: the
        # only refusals are caches that cannot drop rejected nodes.
        assert "cannot drop rejected tree nodes" in outcome.reason, outcome.reason
        return
    # The partially-right heads exercised what the equality claims to cover.
    assert len([d for d in outcome.depths if d > 0]) >= 2, outcome
    assert outcome.rejections > 0 and outcome.moved > 0, outcome
