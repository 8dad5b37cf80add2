"""Stop strings: incremental byte-level matching of each row's completion text."""

from __future__ import annotations


def token_bytes(tokenizer, token: int) -> bytes:
    try:
        return tokenizer.decode_single_token_bytes(token)
    except KeyError:  # an id the tokenizer doesn't know (a model with a larger vocabulary)
        return b""


class StopStrings:
    """Tracks the decoded bytes of every rollout and reports the first token that completes a stop string.

    Matching is on UTF-8 bytes, so a token that ends mid-character never hides a match. A stop string can
    only end a completion once `min_new_tokens` tokens exist; text produced before that is searched then.
    """

    def __init__(self, stops: tuple[str, ...], num_rows: int, min_new_tokens: int, tokenizer):
        self.stops = [s.encode("utf-8") for s in stops]
        self.longest = max(len(s) for s in self.stops)
        self.min_new_tokens = min_new_tokens
        self.tok = tokenizer
        self.buf = [bytearray() for _ in range(num_rows)]
        self.searched = [0] * num_rows  # bytes of each buffer already searched

    def _found(self, buf, searched: int) -> bool:
        start = max(0, searched - self.longest + 1)  # a match may straddle the old end
        return any(buf.find(s, start) >= 0 for s in self.stops)

    def update(self, rows: list[int], tokens: list[int], num_generated: int) -> list[int]:
        """Append tokens[i] to rollout rows[i]; return the positions i whose rollout hit a stop string."""
        hits = []
        eligible = num_generated >= self.min_new_tokens
        for i, (row, token) in enumerate(zip(rows, tokens)):
            buf = self.buf[row]
            buf += token_bytes(self.tok, token)
            if not eligible:
                continue
            if self._found(buf, self.searched[row]):
                hits.append(i)
            self.searched[row] = len(buf)
        return hits

    def would_stop(self, row: int, token: int, num_generated: int) -> bool:
        """Whether appending `token` to rollout `row` (num_generated tokens long with it) completes a stop
        string, without appending it: beam search asks this of every candidate."""
        if num_generated < self.min_new_tokens:
            return False
        buf = self.buf[row] + token_bytes(self.tok, token)
        return self._found(buf, self.searched[row])  # 0 until eligible: then the whole text is searched

    def reorder(self, sources: list[int], tokens: list[int], num_generated: int) -> None:
        """Beam search: row i becomes old row sources[i] extended by tokens[i]."""
        self.buf = [self.buf[s] + token_bytes(self.tok, tok) for s, tok in zip(sources, tokens)]
        eligible = num_generated >= self.min_new_tokens
        self.searched = [len(b) if eligible else 0 for b in self.buf]
