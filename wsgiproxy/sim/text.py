"""Deterministic model output shared by every dialect: answers, token counts, vectors.

Everything is a pure function of the request, so a test can predict the exact answer,
usage and embedding the simulator will send.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import struct
from collections.abc import Sequence

_WORD = re.compile(r"\S+\s*")
QUOTE_CHARS = 80


def answer_text(model: str, said: str) -> str:
    """The simulator's whole answer to a prompt whose last user text is *said*."""
    return f"Hello! This is {model} on the SAP AI Core simulator. You said: {said[:QUOTE_CHARS]}"


def count_tokens(text: str) -> int:
    """Token count of *text*: its number of whitespace-separated words."""
    return len(text.split())


def words(text: str) -> list[str]:
    """*text* cut into words, each keeping its trailing whitespace, so they join back to it."""
    return _WORD.findall(text)


def truncate(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """Cut *text* to *max_tokens* words; returns the text and whether it was cut."""
    pieces = words(text)
    if max_tokens is None or len(pieces) <= max_tokens:
        return text, False
    return "".join(pieces[:max_tokens]).rstrip(), True


def split_chunks(text: str, chunks: int | None) -> list[str]:
    """The content deltas of a streamed *text*: one per word, or exactly *chunks* pieces.

    Forced pieces are cut at even character offsets; when *text* is shorter than
    *chunks* some pieces are empty.  The pieces always join back to *text*.
    """
    if chunks is None:
        return words(text) or [text]
    size, extra = divmod(len(text), chunks)
    pieces, start = [], 0
    for index in range(chunks):
        end = start + size + (1 if index < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def unit_vector(seed_input: object, dimensions: int) -> list[float]:
    """A unit vector of float32 values determined by *seed_input* and *dimensions*.

    The values are rounded to float32 so the ``float`` and ``base64`` encodings of
    one embedding carry exactly the same numbers.
    """
    digest = hashlib.sha256(json.dumps(seed_input, sort_keys=True).encode()).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    raw = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    scaled = [v / norm for v in raw]
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *scaled)))


def float32_base64(vector: Sequence[float]) -> str:
    """*vector* as little-endian float32, base64: the ``encoding_format=base64`` form."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
