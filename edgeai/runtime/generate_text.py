"""Tokens to streamed text: incremental detokenization that never splits a character, and stop strings."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from edgeai.errors import MissingDependencyError, RuntimeLoadError



def load_tokenizer(path: Path):
    """A `tokenizers.Tokenizer` from a tokenizer.json (the `llm` extra on a device)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        from edgeai.extras import install_command  # a command that works from where edgeai runs
        raise MissingDependencyError(f"text prompts need the tokenizers package (the 'llm' extra); run: "
                                     f"{install_command('llm')}, or pass "
                                     "token ids") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises its own Exception type
        raise RuntimeLoadError(f"cannot read tokenizer {str(path)!r}: {' '.join(str(e).split())[:200]}") from None


class TextStream:
    """Feed new token ids one by one; `push` returns the text that is final so far.

    Text is decoded from all generated ids at once (byte-level BPE may need several tokens for one
    character: a trailing U+FFFD is held back), and text that could still become a stop string is
    held back until it cannot. `stopped` turns True once a stop string appears; the text then ends
    before it.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.emitted = 0          # characters of `text` handed out
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True) if self.tokenizer else ""
        for s in self.stop:
            at = text.find(s)
            if at >= 0:
                self.stopped = True
                text = text[:at]
        self.text = text
        final = len(text)
        if not self.stopped:
            if text.endswith("\ufffd"):
                final = len(text.rstrip("\ufffd"))
            final = min(final, *[self._safe_end(text, s) for s in self.stop]) if self.stop else final
        final = max(final, self.emitted)
        piece, self.emitted = text[self.emitted:final], final
        return piece

    def flush(self) -> str:
        """The held-back rest, at the end of generation."""
        piece, self.emitted = self.text[self.emitted:], len(self.text)
        return piece

    @staticmethod
    def _safe_end(text: str, stop: str) -> int:
        """Where text may be cut without splitting a possible start of `stop` at its end."""
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                return len(text) - k
        return len(text)
