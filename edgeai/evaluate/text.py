"""Language-model scores on a text (numpy, onnxruntime, tokenizers; no torch): perplexity over fixed windows
with a stride, and teacher-forced top-1 agreement and KL divergence to a reference (FP32) artifact."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgeai.errors import DataError, MissingDependencyError

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"


def tokenizer_file(where: str | Path) -> Path:
    """tokenizer.json in folder `where` (an export folder), beside file `where`, or `where` itself."""
    where = Path(where)
    for cand in (where, where / TOKENIZER_FILE, where.parent / TOKENIZER_FILE):
        if cand.is_file() and cand.name.endswith(".json"):
            return cand
    raise DataError(f"no {TOKENIZER_FILE} in or beside {str(where)!r}: a decoder export keeps its tokenizer there; "
                    "pass --tokenizer FOLDER_OR_FILE")


def load_tokens(text_file: str | Path, tokenizer: str | Path, max_tokens: int | None = None) -> np.ndarray:
    """The token ids (int64) of a UTF-8 text file, cut to `max_tokens`."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise MissingDependencyError("scoring text needs the tokenizers package; run: pip install tokenizers") from None
    path = Path(text_file)
    if not path.is_file():
        raise DataError(f"eval text {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"eval text {str(path)!r} is not UTF-8 ({e.reason} at byte {e.start})") from None
    ids = np.asarray(Tokenizer.from_file(str(tokenizer_file(tokenizer))).encode(text).ids, dtype=np.int64)
    if max_tokens:
        ids = ids[:max_tokens]
    if ids.size < 2:
        raise DataError(f"eval text {str(path)!r} holds {ids.size} token(s); perplexity needs at least 2")
    return ids


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first target) per window over n tokens: each window [begin, end) is run from an empty
    cache and scores only targets not scored before (>= first target), so every token from the second on is
    predicted exactly once, with up to window - stride tokens of context carried over. Windows start `stride`
    apart, but at least one token before the first target (whose logits predict it)."""
    if not 0 < stride <= window or window < 2:
        raise DataError(f"need 0 < stride <= window and window >= 2, got stride={stride}, window={window}")
    out, scored, begin = [], 1, 0
    while scored < n:
        end = min(begin + window, n)
        out.append((begin, end, scored))
        scored = end
        begin = min(begin + stride, scored - 1)
    return out


@dataclass(frozen=True)
class TextScore:
    """One artifact's scores over the same targets; agreement and KL are to the reference artifact."""

    artifact: str
    perplexity: float
    nll: float                        # mean negative log-likelihood per target token (nats)
    tokens: int                       # targets scored
    top1_agreement: float | None      # share of targets where argmax equals the reference's (0-1)
    kl: float | None                  # mean KL(reference || this) per target, nats
    ppl_increase: float | None        # perplexity / reference perplexity - 1

    def to_dict(self) -> dict:
        return asdict(self)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def score_sessions(sessions: Mapping[str, object], ids: np.ndarray, window: int = 128, stride: int = 64,
                   reference: str | None = None) -> list[TextScore]:
    """Score every DecoderSession (edgeai.runtime.generate) on the same windows of `ids`, each window from an
    empty cache; the reference (default: the first) is what top-1 agreement, KL and the perplexity increase
    compare with."""
    names = list(sessions)
    reference = reference or names[0]
    if reference not in sessions:
        raise DataError(f"reference {reference!r} is not among the artifacts ({', '.join(names)})")
    limit = min((s.max_positions for s in sessions.values() if getattr(s, "max_positions", None)), default=None)
    if limit and window > limit:
        raise DataError(f"window {window} is longer than the model's {limit} positions; pass --window {limit} or less")
    nll = {n: 0.0 for n in names}
    agree = {n: 0 for n in names}
    kl = {n: 0.0 for n in names}
    count = 0
    for begin, end, first in windows(len(ids), window, stride):
        chunk = ids[begin:end]
        targets = ids[first:end]
        rows = slice(first - 1 - begin, end - 1 - begin)  # logits at position t predict token t + 1
        logp = {n: _log_softmax(sessions[n].logits(chunk)[rows]) for n in names}
        ref = logp[reference]
        ref_top = ref.argmax(axis=-1)
        p_ref = np.exp(ref)
        for n in names:
            nll[n] -= float(logp[n][np.arange(len(targets)), targets].sum())
            agree[n] += int((logp[n].argmax(axis=-1) == ref_top).sum())
            kl[n] += float((p_ref * (ref - logp[n])).sum())
        count += len(targets)
    base = float(np.exp(nll[reference] / count))
    out = []
    for n in names:
        ppl = float(np.exp(nll[n] / count))
        out.append(TextScore(n, ppl, nll[n] / count, count, agree[n] / count, max(kl[n] / count, 0.0),
                             ppl / base - 1.0))
    return out


def score_artifacts(paths: Mapping[str, tuple[str | Path, str | None]], ids: np.ndarray, window: int = 128,
                    stride: int = 64, threads: int | None = 1, verify_digest: bool = True,
                    reference: str | None = None) -> list[TextScore]:
    """score_sessions on artifacts given as {label: (path, artifact name or None)}."""
    from edgeai.bench.kv import open_decoder
    sessions = {label: open_decoder(p, a, threads, verify_digest) for label, (p, a) in paths.items()}
    return score_sessions(sessions, ids, window, stride, reference)


def budget_check(score: TextScore, max_ppl_increase: float, min_top1: float) -> list[str]:
    """What breaks the LM budget, in words (empty: within)."""
    out = []
    if score.ppl_increase is not None and score.ppl_increase > max_ppl_increase:
        out.append(f"perplexity +{100 * score.ppl_increase:.2f}% > +{100 * max_ppl_increase:g}%")
    if score.top1_agreement is not None and score.top1_agreement < min_top1:
        out.append(f"top-1 agreement {100 * score.top1_agreement:.1f}% < {100 * min_top1:g}%")
    return out


def summary(scores: Sequence[TextScore]) -> dict:
    """{"perplexity": {artifact: ppl}, ...}: the per-artifact maps the eval JSON holds."""
    return {"perplexity": {s.artifact: s.perplexity for s in scores},
            "top1_agreement": {s.artifact: s.top1_agreement for s in scores},
            "kl": {s.artifact: s.kl for s in scores},
            "tokens": scores[0].tokens if scores else 0}
