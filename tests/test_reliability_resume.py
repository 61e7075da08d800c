"""Resume after an *abandoned* pass: the state counts only the batches the caller took, never the prefetched ones.

tests/test_resume.py covers saving at every cut point of a pass that runs on; here a pass is left with
``break`` (its prefetched batches are dropped), a new pass may start on the same loader, and the state saved
afterwards must still resume to exactly the uninterrupted run: same samples, same augmentation, bit for bit.
"""

from __future__ import annotations

import pytest
from loader_kit import LOADER_KINDS, assert_batches_equal, make_loader, make_synth_cache

KWARGS = dict(batch_size=4, seed=5, augment="default")  # 13 samples: 4 batches per epoch


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synth_cache(tmp_path_factory.mktemp("reliability_resume"), n=13)


@pytest.fixture(scope="module")
def full(cache):
    """The uninterrupted two-epoch run of each loader kind (the reference every resume must equal)."""
    runs = {}
    for kind in LOADER_KINDS:
        loader = make_loader(kind, cache, **KWARGS)
        runs[kind] = list(loader) + list(loader)
        loader.close()
    return runs


def _take(loader, n: int) -> list:
    """Iterate a pass and abandon it (``break``) after ``n`` batches."""
    taken = []
    for batch in loader:
        taken.append(batch)
        if len(taken) == n:
            break
    return taken


def _resume_rest(cache, kind: str, state: dict, total: int, already: int, **kwargs) -> list:
    loader = make_loader(kind, cache, **KWARGS, **kwargs)
    loader.load_state_dict(state)
    rest = []
    while already + len(rest) < total:
        rest.extend(loader)
    loader.close()
    return rest


# (kind, extra loader arguments): the CPU loader both in-process and with worker processes that prefetch
SETUPS = [
    pytest.param("cpu", {}, id="cpu"),
    pytest.param("cpu", {"num_threads": 2, "prefetch": 4}, id="cpu-2-workers"),
    pytest.param("dali", {"prefetch": 3}, id="dali"),
]


@pytest.mark.parametrize(("kind", "extra"), SETUPS)
def test_state_after_break_resumes_the_abandoned_epoch(kind, extra, cache, full):
    loader = make_loader(kind, cache, **KWARGS, **extra)
    seen = _take(loader, 2)  # batches 3 and 4 are already prefetched: they must not count as seen
    state = loader.state_dict()
    loader.close()
    assert (state["epoch"], state["batches_yielded"]) == (0, 2)
    rest = _resume_rest(cache, kind, state, len(full[kind]), len(seen), **extra)
    assert_batches_equal(seen + rest, full[kind])


@pytest.mark.parametrize(("kind", "extra"), SETUPS)
def test_a_new_pass_after_an_abandoned_one_restarts_the_epoch_and_resumes(kind, extra, cache, full):
    loader = make_loader(kind, cache, **KWARGS, **extra)
    _take(loader, 3)  # abandoned: like DataLoader, the next `for` starts the epoch again
    seen = _take(loader, 1)
    assert_batches_equal(seen, full[kind][:1])
    state = loader.state_dict()
    loader.close()
    rest = _resume_rest(cache, kind, state, len(full[kind]), len(seen), **extra)
    assert_batches_equal(seen + rest, full[kind])


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_set_epoch_after_load_state_dict_keeps_the_position(kind, cache, full):
    # the DDP loop calls set_epoch(e) before every pass; after a resume, the first call names the epoch
    # the state is in and must not throw the position away (that would repeat the batches already trained on)
    first = make_loader(kind, cache, **KWARGS)
    seen = _take(first, 3)
    state = first.state_dict()
    first.close()
    resumed = make_loader(kind, cache, **KWARGS)
    resumed.load_state_dict(state)
    rest = []
    for epoch in range(state["epoch"], 2):
        resumed.set_epoch(epoch)
        rest.extend(resumed)
    assert_batches_equal(seen + rest, full[kind])
    # another epoch than the state's is an explicit choice: it starts that epoch from its first batch
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert_batches_equal(list(resumed), full[kind][4:])
    resumed.close()
