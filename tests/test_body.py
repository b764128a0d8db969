"""Parsing a request body: the shortcut past json.loads's encoding guess gives json.loads's answers."""

from __future__ import annotations

import json
import typing as t

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgiproxy.body import _loads, json_object
from wsgiproxy.errors import ApiError

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]


def outcome(parse: t.Callable[[bytes], object], raw: bytes) -> object:
    try:
        return ("value", parse(raw))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return ("error", type(exc), str(exc))


@given(value=st.dictionaries(st.text(), JSON_VALUES, max_size=5), encoding=st.sampled_from(ENCODINGS),
       ensure_ascii=st.booleans())
def test_objects_in_every_encoding_json_loads_reads(value: dict[str, object], encoding: str,
                                                    ensure_ascii: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ensure_ascii).encode(encoding, "surrogatepass")
    assert outcome(_loads, raw) == outcome(json.loads, raw)


@given(raw=st.binary(max_size=12) | st.builds(lambda tail: b"{" + tail, st.binary(max_size=12)))
def test_any_bytes_get_the_same_value_or_error(raw: bytes) -> None:
    assert repr(outcome(_loads, raw)) == repr(outcome(json.loads, raw))  # repr: nan != nan


@pytest.mark.parametrize("raw", [b'{"a":"\\ud800"}', b'{"a":"\xed\xa0\x80"}', b"{\x00", b'{"a":1} x', b"{", b"{}"])
def test_edge_cases_match_json_loads(raw: bytes) -> None:
    assert repr(outcome(_loads, raw)) == repr(outcome(json.loads, raw))


def test_json_object_errors_name_the_problem() -> None:
    for raw, says in [(b'{"a": 1,}', "not valid JSON: Expecting property name enclosed in double quotes at line 1"),
                      (b'{"a": "\xff"}', "not UTF-8"), (b"[]", "a JSON list")]:
        with pytest.raises(ApiError) as error:
            json_object(raw)
        assert says in error.value.message
