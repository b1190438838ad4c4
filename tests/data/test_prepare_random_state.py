"""Preparing a corpus on first use happens inside a run, after seeding and before the model is
built: it must leave every global random generator as it found it, or the process that
prepares would initialise its model differently from one that found the cache ready."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from lit_unitscale.data.prepare import prepare

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "text"


def test_prepare_leaves_torch_numpy_and_python_random_states_unchanged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    for tokenizer in ("word", "bpe"):
        prepare([str(FIXTURE)], tmp_path / tokenizer, tokenizer, 300, workers=1, progress=False)
    assert torch.equal(before[0], torch.get_rng_state())
    assert before[1] == random.getstate()
    assert (before[2] == np.random.get_state()[1]).all()
    # The next draws are those of a process that never prepared.
    drawn = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.rand(3))
