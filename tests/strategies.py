"""Hypothesis strategies that tests of more than one package draw from.

Test modules import this one as `from tests.strategies import mutated` (pytest's
importlib mode imports tests/ as a namespace package from the rootdir).
"""

from __future__ import annotations

from hypothesis import strategies as st

# msgpack array headers a decoder may meet where it expects something else: fixarrays
# of 0, 1, 2 and 4 items, nil, and array16 headers declaring 2 and 4 items.
CONTAINER_HEADERS = [b"\x90", b"\x91", b"\x92", b"\x94", b"\xc0", b"\xdc\x00\x02", b"\xdc\x00\x04"]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """One edit of `data`: flip, truncate, extend, insert, delete, or a container header."""
    raw = bytearray(data)
    op = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "header"]))
    i = draw(st.integers(0, max(len(raw) - 1, 0)))
    if op == "flip" and raw:
        raw[i] ^= draw(st.integers(1, 255))
    elif op == "truncate":
        raw = raw[:i]
    elif op == "extend":
        raw += draw(st.binary(min_size=1, max_size=8))
    elif op == "insert":
        raw[i:i] = draw(st.binary(min_size=1, max_size=4))
    elif op == "delete":
        del raw[i : i + draw(st.integers(1, 4))]
    else:
        raw[i : i + 1] = draw(st.sampled_from(CONTAINER_HEADERS))
    return bytes(raw)
