"""Stop strings: incremental byte-level matching of each row's completion text."""

from __future__ import annotations


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

    def _bytes(self, token: int) -> bytes:
        try:
            return self.tok.decode_single_token_bytes(token)
        except KeyError:  # an id the tokenizer doesn't know (a model with a larger vocabulary)
            return b""

    def update(self, rows: list[int], tokens: list[int], num_generated: int) -> list[int]:
        """Append tokens[i] to rollout rows[i]; return the positions i whose rollout hit a stop string."""
        hits = []
        eligible = num_generated >= self.min_new_tokens
        for i, (row, token) in enumerate(zip(rows, tokens)):
            buf = self.buf[row]
            buf += self._bytes(token)
            if not eligible:
                continue
            start = max(0, self.searched[row] - self.longest + 1)
            if any(buf.find(s, start) >= 0 for s in self.stops):
                hits.append(i)
            self.searched[row] = len(buf)
        return hits
