"""Resuming mid-epoch yields exactly the remaining batches of the uninterrupted run: same samples, same pixels."""

from __future__ import annotations

import pytest
from loader_kit import LOADER_KINDS, assert_batches_equal, make_loader, make_synth_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synth_cache(tmp_path_factory.mktemp("resume"), n=13)


def _run(loader, epochs):
    out = []
    for _ in range(epochs):
        out.extend(loader)
    return out


@pytest.mark.parametrize("kind", LOADER_KINDS)
@pytest.mark.parametrize("cut", [0, 1, 3, 4, 5, 7])  # 4 batches per epoch: cut 4 is the epoch boundary
def test_resume_at_cut_point_matches_uninterrupted_run(kind, cut, cache):
    kwargs = dict(batch_size=4, seed=9, augment="default")
    full = _run(make_loader(kind, cache, **kwargs), epochs=2)

    first = make_loader(kind, cache, **kwargs)
    seen, state = [], first.state_dict()
    for _ in range(2):
        for batch in first:
            if len(seen) == cut:
                break
            seen.append(batch)
            state = first.state_dict()
        if len(seen) == cut:
            break
    first.close()

    resumed = make_loader(kind, cache, **kwargs)
    resumed.load_state_dict(state)
    rest = []
    while len(seen) + len(rest) < len(full):
        rest.extend(resumed)
    assert_batches_equal(seen + rest, full)
    resumed.close()


def test_state_from_another_setup_is_refused(cache):
    a = make_loader("cpu", cache, batch_size=4)
    b = make_loader("cpu", cache, batch_size=3)
    with pytest.raises(ValueError, match="batch_size"):
        b.load_state_dict(a.state_dict())


def test_state_from_another_cache_augmentation_or_size_is_refused_naming_it(cache, tmp_path):
    other_cache = make_synth_cache(tmp_path, n=13, seed=1)  # as many samples, other content
    state = make_loader("cpu", cache, batch_size=4, augment="default").state_dict()
    for kwargs, words in (
        ({"cache": other_cache}, r"the cache's content \(another cache, or one rebuilt\)"),
        ({"augment": "none"}, "the augmentation config"),
        ({"size": (48, 48)}, "the output size"),
    ):
        setup = {"cache": cache, "batch_size": 4, "augment": "default", **kwargs}
        loader = make_loader("cpu", setup.pop("cache"), **setup)
        with pytest.raises(ValueError, match=f"load_state_dict: {words} differs"):
            loader.load_state_dict(state)
    same = make_loader("cpu", cache, batch_size=4, augment="default")
    same.load_state_dict(state)  # the same setup resumes
    old = {k: v for k, v in state.items() if k != "fingerprint"} | {"version": 1}
    same.load_state_dict(old)  # a state saved before fingerprints: counts checked, nothing more to check


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_a_second_thread_iterating_a_loader_is_refused_and_the_first_is_unharmed(kind, cache):
    import threading

    loader = make_loader(kind, cache, batch_size=2, augment="none", shuffle=False)
    first = iter(loader)
    got = [next(first)["index"].tolist()]
    errors = []

    def second():
        try:
            next(iter(loader))
        except RuntimeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=second, name="intruder")
    thread.start()
    thread.join()
    got += [b["index"].tolist() for b in first]
    loader.close()
    assert errors and "is being iterated in thread 'MainThread'" in errors[0] and "its own loader" in errors[0]
    assert sorted(i for batch in got for i in batch) == list(range(13))  # the first pass lost nothing


@pytest.mark.parametrize("kind", LOADER_KINDS)
def test_state_dict_is_plain_json_data(kind, cache):
    import json

    loader = make_loader(kind, cache, batch_size=4)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    assert json.loads(json.dumps(state)) == state  # goes into torch.save / JSON checkpoints as is
    assert (state["epoch"], state["batches_yielded"]) == (0, 1)
    loader.close()
