"""`edgeai data text`: token ids (and labels) from a text file, for calibration, evaluation and run."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np

from edgeai.argtypes import positive_int
from edgeai.errors import DataError, MissingDependencyError, ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 512   # cap when neither --max-length nor the tokenizer gives one


def tokenize_file(path: str | Path, tokenizer: str, max_length: int | None = None) -> dict[str, np.ndarray]:
    """One sample per line of `path`, tokenized by `tokenizer` (hf:FOLDER or hf:ORG/NAME).

    A line `TEXT<TAB>LABEL` gives a label (an integer, or a name the model's config.json
    maps in label2id); either every line has one or none does. Samples are padded to
    `max_length` (default: the longest line, within the tokenizer's limit) and truncated to it.
    Returns int64 arrays named as the tokenizer names them (input_ids, attention_mask, ...)
    plus `labels` when given.
    """
    texts, labels = read_lines(path)
    tok, folder = load_tokenizer(tokenizer)
    limit = max_length or _tokenizer_limit(tok)
    enc = tok(texts, padding="max_length" if max_length else "longest", truncation=True, max_length=limit,
              return_tensors="np")
    feeds = {name: np.asarray(enc[name], dtype=np.int64) for name in tok.model_input_names if name in enc}
    lengths = [len(ids) for ids in tok(texts, truncation=False)["input_ids"]]
    cut = sum(n > limit for n in lengths)
    if cut:
        log.warning("%d of %d lines were longer than %d tokens and were truncated", cut, len(texts), limit)
    if labels is not None:
        feeds["labels"] = _label_ids(labels, folder)
    return feeds


def read_lines(path: str | Path) -> tuple[list[str], list[str] | None]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file {str(path)!r} does not exist")
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise DataError(f"text file {str(path)!r} is not UTF-8 ({e.reason} at byte {e.start})") from None
    if not lines:
        raise DataError(f"text file {str(path)!r} has no non-empty lines; write one sample per line")
    rows = [ln.split("\t") for ln in lines]
    widths = {len(r) for r in rows}
    if widths == {1}:
        return lines, None
    if widths != {2}:
        first = next(i for i, r in enumerate(rows, 1) if len(r) != len(rows[0]) or len(r) > 2)
        raise DataError(f"{path.name} line {first}: every line must be TEXT or TEXT<TAB>LABEL, the same for "
                        "all lines")
    return [r[0] for r in rows], [r[1].strip() for r in rows]


def load_tokenizer(spec: str):
    from edgeai.hf import resolve_folder
    try:
        from transformers import AutoTokenizer
    except ImportError:
        from edgeai.extras import install_command
        raise MissingDependencyError(f"--tokenizer hf:... needs transformers; run: {install_command('hf')}") from None
    if not spec.startswith("hf:"):
        raise DataError(f"--tokenizer {spec!r}: write hf:FOLDER (a saved tokenizer) or hf:ORG/NAME")
    folder, name, _ = resolve_folder(spec)
    check_json_files(folder, TOKENIZER_JSON)
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except Exception as e:  # noqa: BLE001  (the tokenizers library raises a bare Exception on a bad file)
        raise ModelLoadError(f"{name!r} holds no tokenizer transformers can load: "
                             f"{' '.join(str(e).split())[:250]}") from None
    return tok, folder


TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")


def check_json_files(folder: Path, names: tuple[str, ...]) -> None:
    """ModelLoadError naming the file when one of `names` in `folder` is not UTF-8 JSON (the libraries say less)."""
    from edgeai.typed import read_json
    for name in names:
        path = folder / name
        if path.is_file():
            try:
                read_json(path)
            except ValueError as e:
                raise ModelLoadError(f"{str(path)!r} is {e}; restore it (save_pretrained writes it)") from None


def _tokenizer_limit(tok) -> int:
    limit = getattr(tok, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else DEFAULT_MAX_LENGTH


def _label_ids(labels: list[str], folder: Path) -> np.ndarray:
    if all(_is_int(x) for x in labels):
        return np.asarray([int(x) for x in labels], dtype=np.int64)
    config = folder / "config.json"
    label2id = json.loads(config.read_text(encoding="utf-8")).get("label2id", {}) if config.is_file() else {}
    unknown = sorted({x for x in labels if x not in label2id and not _is_int(x)})
    if unknown:
        where = f"the label2id of {config}" if label2id else "no label2id (config.json) beside the tokenizer"
        raise DataError(f"label(s) {', '.join(map(repr, unknown[:5]))} are not integers and not in {where}; "
                        "write class indices in the second column")
    return np.asarray([int(x) if _is_int(x) else int(label2id[x]) for x in labels], dtype=np.int64)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


# ---------------------------------------------------------------------------- command line

def add_parser(sub) -> None:
    p = sub.add_parser("data", help="make input files (.npz) for calibration, eval and run")
    kinds = p.add_subparsers(dest="data_kind", metavar="KIND", required=True)
    t = kinds.add_parser("text", help="token ids from a text file (one sample per line, optional TAB label)",
                         description="Tokenize FILE.txt (one sample per line; TEXT<TAB>LABEL adds 'labels') "
                                     "into an .npz keyed by the model's input names.")
    t.add_argument("file", metavar="FILE.txt")
    t.add_argument("--tokenizer", required=True, metavar="hf:DIR|hf:ORG/NAME", help="a saved Hugging Face tokenizer")
    t.add_argument("--max-length", type=positive_int, default=None, metavar="N",
                   help="pad and truncate every sample to N tokens (default: the longest line)")
    t.add_argument("-o", "--output", required=True, metavar="OUT.npz")
    t.set_defaults(func=cmd_text)


def cmd_text(args) -> int:
    from edgeai.fsutil import check_output_file, write_output
    if args.max_length is not None and args.max_length < 2:
        raise DataError(f"--max-length must be >= 2 (room for the special tokens), got {args.max_length}")
    out = check_output_file(args.output)
    feeds = tokenize_file(args.file, args.tokenizer, args.max_length)
    buf = io.BytesIO()
    np.savez(buf, **feeds)
    write_output(out, buf.getvalue())  # a full disk is one line naming the file (fsutil.disk_error)
    for name, arr in feeds.items():
        print(f"{name}: shape {tuple(arr.shape)} {arr.dtype}")
    print(f"wrote {out}")
    return 0
