"""`edgeai data text`: token ids and labels from a text file, used to calibrate, evaluate and run hf: models."""
import json

import numpy as np
import pytest

pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("transformers")

import hf_tiny  # noqa: E402

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away", "##s"]
SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
ID = {w: i + 5 for i, w in enumerate(WORDS)}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return hf_tiny.wordpiece_vocab(tmp_path_factory.mktemp("tok") / "tok", WORDS)


def test_text_lines_become_wordpiece_ids_with_labels_padded_to_max_length(tokenizer_dir, tmp_path, cli):
    text = tmp_path / "s.txt"
    text.write_text("The cat sat\t1\n\nthe dogs ran far away\t0\nzebra\t2\n")
    code, out, _ = cli("data", "text", text, "--tokenizer", f"hf:{tokenizer_dir}", "--max-length", "8",
                       "-o", tmp_path / "d.npz")
    assert code == 0 and "wrote" in out
    d = np.load(tmp_path / "d.npz")
    assert list(d.files) == ["input_ids", "token_type_ids", "attention_mask", "labels"]
    cls, sep, unk = SPECIAL["[CLS]"], SPECIAL["[SEP]"], SPECIAL["[UNK]"]
    assert d["input_ids"].tolist() == [
        [cls, ID["the"], ID["cat"], ID["sat"], sep, 0, 0, 0],
        [cls, ID["the"], ID["dog"], ID["##s"], ID["ran"], ID["far"], ID["away"], sep],
        [cls, unk, sep, 0, 0, 0, 0, 0]]
    assert d["attention_mask"].sum(1).tolist() == [5, 8, 3]
    assert d["labels"].tolist() == [1, 0, 2] and d["input_ids"].dtype == np.int64


def test_without_max_length_pads_to_the_longest_line_and_truncates_when_given(tokenizer_dir, tmp_path, cli):
    from edgeai.data_text import tokenize_file
    text = tmp_path / "s.txt"
    text.write_text("cat\nthe cat sat on the mat\n")
    d = tokenize_file(text, f"hf:{tokenizer_dir}")
    assert d["input_ids"].shape == (2, 8) and "labels" not in d
    short = tokenize_file(text, f"hf:{tokenizer_dir}", max_length=4)
    assert short["input_ids"][1].tolist() == [SPECIAL["[CLS]"], ID["the"], ID["cat"], SPECIAL["[SEP]"]]


@pytest.mark.parametrize("content,message", [
    ("a\t1\nb\n", "TEXT<TAB>LABEL"),
    ("a\tpositive\n", "not integers"),
    ("\n\n", "no non-empty lines"),
])
def test_bad_text_files_are_one_line_errors(tokenizer_dir, tmp_path, cli, content, message):
    text = tmp_path / "s.txt"
    text.write_text(content)
    code, _, err = cli("data", "text", text, "--tokenizer", f"hf:{tokenizer_dir}", "-o", tmp_path / "d.npz")
    assert code == 2 and message in err and not (tmp_path / "d.npz").exists()


def test_label_names_map_through_the_models_label2id(tokenizer_dir, tmp_path):
    import shutil

    from edgeai.data_text import tokenize_file
    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, folder)
    (folder / "config.json").write_text(json.dumps({"label2id": {"negative": 0, "positive": 1}}))
    text = tmp_path / "s.txt"
    text.write_text("the cat\tpositive\nthe dog\tnegative\n")
    assert tokenize_file(text, f"hf:{folder}")["labels"].tolist() == [1, 0]


def test_text_data_calibrates_evaluates_and_runs_an_hf_classifier(tokenizer_dir, tmp_path, cli):
    """Tokenized text drives static INT8 calibration, eval top-1 (equal to transformers') and run."""
    import torch
    from transformers import BertForSequenceClassification

    folder = hf_tiny.bert_classifier(tmp_path / "clf", num_labels=3)
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS[:-1], size=rng.integers(2, 9))) + f"\t{rng.integers(0, 3)}" for _ in range(48)]
    (tmp_path / "s.txt").write_text("\n".join(lines) + "\n")
    assert cli("data", "text", tmp_path / "s.txt", "--tokenizer", f"hf:{tokenizer_dir}", "--max-length", "12",
               "-o", tmp_path / "d.npz")[0] == 0
    code, _, err = cli("export", f"hf:{folder}", "--calibration", tmp_path / "d.npz", "--eval-data", tmp_path / "d.npz",
                       "--quantize", "int8-static", "--no-bench", "-o", tmp_path / "out", "-q")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [a["name"] for a in manifest["artifacts"]] == ["fp32", "int8-static"]
    data = dict(np.load(tmp_path / "d.npz"))
    labels = data.pop("labels")
    with torch.inference_mode():
        logits = BertForSequenceClassification.from_pretrained(folder).eval()(
            **{k: torch.from_numpy(v) for k, v in data.items()}).logits.numpy()
    want = 100.0 * float((logits.argmax(1) == labels).mean())
    code, out, _ = cli("eval", tmp_path / "out", "--eval-data", tmp_path / "d.npz", "--json", tmp_path / "e.json")
    results = json.loads((tmp_path / "e.json").read_text())["results"]
    assert code == 0 and results[0]["metric"] == "top1" and results[0]["value"] == pytest.approx(want)
    assert results[0]["n"] == 48 and abs(results[1]["value"] - want) <= 100.0 * 3 / 48
    code, out, _ = cli("run", tmp_path / "out", "--input-data", tmp_path / "d.npz", "-o", tmp_path / "o.npz")
    assert code == 0 and np.abs(np.load(tmp_path / "o.npz")["logits"] - logits).max() < 1e-4
