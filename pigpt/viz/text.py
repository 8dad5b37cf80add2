"""Tokens as people can read them: visible whitespace, quoted, shortened."""

from __future__ import annotations

EOT_TEXT = "<|endoftext|>"


def token_text(tokenizer, token: int) -> str:
    """The text of one token (a token that is only part of a UTF-8 character shows as U+FFFD)."""
    if token == tokenizer.eot_token:
        return EOT_TEXT
    return tokenizer.decode_single_token_bytes(token).decode("utf-8", errors="replace")


def visible(text: str, limit: int = 16) -> str:
    """A token's text quoted so that its spaces show ('␣Pacific' reads worse than ' Pacific' in quotes)."""
    if text == EOT_TEXT:
        return text
    body = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if len(body) > limit:
        body = body[: limit - 1] + "…"
    return f"'{body}'"


def show_token(tokenizer, token: int, limit: int = 16) -> str:
    return visible(token_text(tokenizer, token), limit)


def shorten(text: str, limit: int, *, keep_end: bool = True) -> str:
    """One line of at most `limit` characters; keeps the end (the context nearest the next token) by default.
    Newlines show as ↵, tabs as → and trailing spaces as ␣, since the next token depends on them
    (a raw tab draws as a missing-glyph box in matplotlib)."""
    stripped = text.rstrip(" ")
    text = stripped + "␣" * (len(text) - len(stripped))
    text = text.replace("\n", "↵").replace("\t", "→")
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1):] if keep_end else text[: limit - 1] + "…"
