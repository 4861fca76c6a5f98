"""The zoo trains a model once per machine: trained weights are kept on disk, keyed by the zoo's code."""
import torch

from edgeai.zoo import _synthetic


def _run(calls: list, key=("t", "lin")):
    def build():
        return torch.nn.Linear(4, 3)

    def train(model):
        calls.append(1)
        with torch.no_grad():
            model.weight.add_(1.5)
        return model

    return _synthetic.cached(key, build, train)


def _fresh_process(monkeypatch):
    monkeypatch.setattr(_synthetic, "_TRAINED", {})


def test_second_process_reads_the_weights_instead_of_training(tmp_path, monkeypatch):
    monkeypatch.setenv(_synthetic.CACHE_ENV, str(tmp_path))
    _fresh_process(monkeypatch)
    calls = []
    first = _run(calls)
    path = _synthetic.cache_path(("t", "lin"))
    assert calls == [1] and path.is_file() and path.parent == tmp_path
    _fresh_process(monkeypatch)
    second = _run(calls)
    assert calls == [1]
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)


def test_a_corrupt_file_is_trained_again_and_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv(_synthetic.CACHE_ENV, str(tmp_path))
    path = _synthetic.cache_path(("t", "lin"))
    path.write_bytes(b"not a torch file")
    _fresh_process(monkeypatch)
    calls = []
    model = _run(calls)
    assert calls == [1]
    assert torch.equal(torch.load(path, weights_only=True)["weight"], model.weight)


def test_off_keeps_nothing_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv(_synthetic.CACHE_ENV, "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    _fresh_process(monkeypatch)
    calls = []
    _run(calls)
    _fresh_process(monkeypatch)
    _run(calls)
    assert calls == [1, 1] and _synthetic.cache_path(("t", "lin")) is None and not any(tmp_path.rglob("*.pt"))


def test_the_name_changes_with_the_key_and_the_seed(tmp_path, monkeypatch):
    monkeypatch.setenv(_synthetic.CACHE_ENV, str(tmp_path))
    names = {_synthetic.cache_path(("t", "a")), _synthetic.cache_path(("t", "b")),
             _synthetic.cache_path(("t", "a"), seed=1)}
    assert len(names) == 3
