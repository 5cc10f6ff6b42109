import os
import pickle

import pytest
import torch

from captum_concepts._utils.persistence import load_state, save_state


def test_round_trip_keeps_tensors_and_meta(tmp_path):
    path = tmp_path / "state.pt"
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    save_state(path, "Thing", tensors, {"n": 3, "names": ["x", "y"], "opt": None})
    loaded, meta = load_state(path, "Thing")
    assert set(loaded) == {"a", "b"}
    assert torch.equal(loaded["a"], tensors["a"]) and loaded["b"].dtype == torch.int64
    assert meta["n"] == 3 and meta["names"] == ["x", "y"] and meta["opt"] is None
    assert meta["package_version"]
    assert not os.path.exists(f"{path}.tmp")


def test_wrong_kind_missing_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "state.pt"
    save_state(path, "Thing", {"a": torch.ones(100, 100)}, {})
    with pytest.raises(ValueError, match="holds a 'Thing', not a 'Other'"):
        load_state(path, "Other")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state(tmp_path / "nope.pt", "Thing")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable captum_concepts file"):
        load_state(truncated, "Thing")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(ValueError, match="not saved by captum_concepts"):
        load_state(foreign, "Thing")
    with pytest.raises(TypeError, match="JSON"):
        save_state(path, "Thing", {}, {"bad": object()})


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/captum_concepts_pwned",))


def test_a_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = "/tmp/captum_concepts_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    torch.save({"magic": "captum_concepts", "payload": _Evil()}, path)
    with pytest.raises(ValueError, match="not a readable captum_concepts file"):
        load_state(path, "Thing")
    assert not os.path.exists(marker)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ValueError):
        load_state(raw, "Thing")
    assert not os.path.exists(marker)
