"""The key gate: ``canonical_key`` accepts exactly the keys the rules allow, in NFC.

The property test at the end compares the gate with a small reference model
that states the rules independently (code-point ranges rather than Unicode
categories), on generated text full of the characters the rules are about.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servefiles import InvalidKey, canonical_key
from servefiles.keys import KNOWN_KEYS, MAX_KEY_BYTES, MAX_SEGMENT_BYTES

# -- accepted keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "a.txt",
        "images/2024/photo.jpg",
        ".hidden",
        "a/.b",
        "...",
        "a/..b/c..",
        "name with spaces.pdf",
        "a:b@c;d=e&f?g#h%20",
        "日本語/ファイル.png",
        "emoji-😀.gif",
        "x\u200by",  # zero-width space (a format character, not a control)
        "\U0010ffff",
        "~/a",
    ],
)
def test_valid_key_is_returned_unchanged(key: str) -> None:
    assert canonical_key(key) == key


def test_key_of_exactly_max_bytes_is_accepted() -> None:
    key = "/".join(["s" * 200] * 5)
    key += "/" + "k" * (MAX_KEY_BYTES - len(key) - 1)
    assert len(key.encode()) == MAX_KEY_BYTES
    assert canonical_key(key) == key


def test_segment_of_exactly_max_bytes_is_accepted() -> None:
    key = "d/" + "é" * (MAX_SEGMENT_BYTES // 2) + "x"  # 2-byte characters: 255 bytes
    assert len(key.split("/")[1].encode()) == MAX_SEGMENT_BYTES
    assert canonical_key(key) == key


# -- rejected keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("/a", id="leading-slash"),
        pytest.param("/", id="only-slash"),
        pytest.param("a/", id="trailing-slash"),
        pytest.param("a//b", id="double-slash"),
        pytest.param(".", id="dot"),
        pytest.param("..", id="dotdot"),
        pytest.param("a/./b", id="dot-segment"),
        pytest.param("a/../b", id="dotdot-segment"),
        pytest.param("../etc/passwd", id="leading-dotdot"),
        pytest.param("a/..", id="trailing-dotdot"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("..\\x", id="backslash-dotdot"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\x01b", id="c0-soh"),
        pytest.param("a\tb", id="c0-tab"),
        pytest.param("a\nb", id="c0-lf"),
        pytest.param("a\rb", id="c0-cr"),
        pytest.param("a\x1fb", id="c0-us"),
        pytest.param("a\x7fb", id="del"),
        pytest.param("a\x80b", id="c1-first"),
        pytest.param("a\x85b", id="c1-nel"),
        pytest.param("a\x9fb", id="c1-last"),
        pytest.param("a\u2028b", id="line-separator"),
        pytest.param("a\u2029b", id="paragraph-separator"),
        pytest.param("a\ufffdb", id="replacement-character"),
        pytest.param("a\ud800b", id="lone-high-surrogate"),
        pytest.param("a\udfffb", id="lone-low-surrogate"),
    ],
)
def test_invalid_key_is_rejected(key: str) -> None:
    with pytest.raises(InvalidKey):
        canonical_key(key)
    with pytest.raises(InvalidKey):  # asked again: a refusal is never remembered as a key
        canonical_key(key)
    with pytest.raises(InvalidKey):
        canonical_key(key.encode("utf-8", "surrogatepass"))


def test_remembered_keys_give_the_same_answer_as_the_first_time() -> None:
    """canonical_key remembers valid keys (KNOWN_KEYS of them): the answer for a key seen
    before, after many others pushed it out or not, is the first answer."""
    first = {raw: canonical_key(raw) for raw in ("cafe\u0301.png", "a/b.png", "x" * 255)}
    for i in range(KNOWN_KEYS + 10):
        canonical_key(f"filler/{i}.png")
    assert {raw: canonical_key(raw) for raw in first} == first
    assert first["cafe\u0301.png"] == "caf\u00e9.png"  # NFC, however often it is asked for


def test_invalid_key_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        canonical_key("../x")


def test_key_longer_than_max_bytes_is_rejected() -> None:
    key = "/".join(["s" * 200] * 6)[: MAX_KEY_BYTES + 1]
    assert len(key.encode()) == MAX_KEY_BYTES + 1
    assert not key.endswith("/")
    with pytest.raises(InvalidKey):
        canonical_key(key)


def test_key_length_is_counted_in_utf8_bytes() -> None:
    # 400 characters, 1200 bytes: too long although far fewer than 1024 characters.
    key = "/".join(["語" * 80] * 5)
    assert len(key) < MAX_KEY_BYTES < len(key.encode())
    with pytest.raises(InvalidKey):
        canonical_key(key)


def test_segment_longer_than_max_bytes_is_rejected() -> None:
    with pytest.raises(InvalidKey):
        canonical_key("d/" + "s" * (MAX_SEGMENT_BYTES + 1))


def test_segment_length_is_counted_in_utf8_bytes() -> None:
    segment = "é" * 128  # 128 characters, 256 bytes
    with pytest.raises(InvalidKey):
        canonical_key("d/" + segment)


@pytest.mark.parametrize("value", [None, 42, 1.5, ["a"], object()], ids=["none", "int", "float", "list", "object"])
def test_non_text_key_is_rejected(value: object) -> None:
    with pytest.raises(InvalidKey):
        canonical_key(value)  # type: ignore[arg-type]


# -- NFC ----------------------------------------------------------------------------------


def test_nfd_key_is_normalised_to_nfc() -> None:
    nfd = "cafe\u0301/re\u0301sume\u0301.txt"
    assert canonical_key(nfd) == "caf\u00e9/r\u00e9sum\u00e9.txt"


def test_nfc_and_nfd_spellings_give_the_same_key() -> None:
    nfc = "Ångström/ﬁle.txt"  # the ligature has only a compatibility decomposition: kept
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    assert canonical_key(nfd) == canonical_key(nfc) == nfc


def test_compatibility_characters_are_not_folded() -> None:
    # NFC, not NFKC: a full-width letter or a ligature stays what it is.
    assert canonical_key("\uff21\uff22/\ufb01") == "\uff21\uff22/\ufb01"


def test_length_limits_apply_to_the_nfc_form() -> None:
    nfd_segment = "e\u0301" * 100  # 300 bytes in NFD, 200 bytes in NFC
    assert len(nfd_segment.encode()) > MAX_SEGMENT_BYTES
    assert canonical_key("d/" + nfd_segment) == "d/" + "\u00e9" * 100


def test_combining_mark_does_not_hide_a_dot_segment() -> None:
    # ".\u0301" is not ".", so it is an ordinary segment, but "." itself stays refused.
    assert canonical_key("a/.\u0301/b") == "a/.\u0301/b"
    with pytest.raises(InvalidKey):
        canonical_key("a/./b\u0301")


# -- bytes ------------------------------------------------------------------------------


def test_utf8_bytes_are_decoded() -> None:
    assert canonical_key("photos/été.jpg".encode()) == "photos/été.jpg"


def test_nfd_bytes_are_normalised() -> None:
    assert canonical_key("cafe\u0301".encode()) == "caf\u00e9"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff", id="ff"),
        pytest.param(b"a\xc3", id="truncated"),
        pytest.param(b"\xc0\xaf", id="overlong-slash"),
        pytest.param(b"\xed\xa0\x80", id="encoded-surrogate"),
        pytest.param(b"a/\x80", id="lone-continuation"),
        pytest.param(b"\xf4\x90\x80\x80", id="beyond-max-code-point"),
    ],
)
def test_invalid_utf8_bytes_are_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidKey):
        canonical_key(raw)


@pytest.mark.parametrize("raw", [b"", b"/a", b"a//b", b"../x", b"a\\b", b"a\x00b", "a\u2028".encode()])
def test_bytes_follow_the_same_rules_as_text(raw: bytes) -> None:
    with pytest.raises(InvalidKey):
        canonical_key(raw)


# -- property: the gate against a reference model -------------------------------------------


def reference_key(text: str) -> str | None:
    """The rules, stated independently: the canonical key, or None when refused."""

    def forbidden(char: str) -> bool:
        code = ord(char)
        return (
            code <= 0x1F  # C0 controls, NUL included
            or 0x7F <= code <= 0x9F  # DEL and the C1 controls
            or 0xD800 <= code <= 0xDFFF  # surrogates (never valid on their own)
            or code in (0x2028, 0x2029, 0xFFFD)  # line/paragraph separators, replacement char
            or char == "\\"
        )

    if not text or any(forbidden(c) for c in text):
        return None
    canonical = unicodedata.normalize("NFC", text)
    if any(forbidden(c) for c in canonical):  # normalising must not smuggle one in
        return None
    if len(canonical.encode("utf-8")) > 1024:
        return None
    for segment in canonical.split("/"):  # a leading, trailing or double '/' gives ""
        if segment in ("", ".", "..") or len(segment.encode("utf-8")) > 255:
            return None
    return canonical


def gate(raw: str | bytes) -> str | None:
    try:
        return canonical_key(raw)
    except InvalidKey:
        return None


# Mostly harmless characters (letters, combining marks, characters NFC changes),
# so that a refusal usually has one cause, plus the characters the rules are about.
_SAFE = [
    "a", "b", "z", "A", "0", "-", "_", "~", " ", ":", "%", "\u00e9", "\u00fc", "\u00a0", "\u8a9e", "\U0001f600",
    "\u0301", "\u0308", "\u0327", "\u0338", "\u212b", "\u2126", "\u1100", "\u1161", "\u11a8", "\uac00",
    "\u200b", "\ufeff", "\uff0e", "\uff0f", "\u2024", "\u2215", "\U0010ffff", "\ufffe",
]  # fmt: skip
_SPECIAL = [
    "\\", "\x00", "\x01", "\t", "\n", "\r", "\x1f", "\x7f", "\x80", "\x85", "\x9f",
    "\u2028", "\u2029", "\ufffd", "\ud800", "\udbff", "\udc00", "\udfff",
]  # fmt: skip

_safe_char = st.sampled_from(_SAFE)
_any_char = st.one_of(_safe_char, _safe_char, _safe_char, st.sampled_from(_SPECIAL), st.characters())
_segment = st.one_of(
    st.just(""),
    st.just("."),
    st.just(".."),
    st.text(_safe_char, min_size=1, max_size=6),
    st.text(_any_char, min_size=1, max_size=6),
)
_path_text = st.lists(_segment, min_size=1, max_size=5).map("/".join)
_free_text = st.text(st.one_of(_any_char, st.sampled_from("/./.")), max_size=16)


@st.composite
def _near_limits(draw: st.DrawFn) -> str:
    """Keys whose segments and total length sit right around the byte limits."""
    unit = draw(st.sampled_from(["s", "\u00e9", "e\u0301", "\u8a9e"]))  # NFC: 1, 2, 2, 3 bytes
    unit_bytes = len(unicodedata.normalize("NFC", unit).encode())
    segments = []
    for _ in range(draw(st.sampled_from([1, 2, 4, 4, 4]))):  # four ~255-byte segments: ~1020 bytes
        target = draw(st.integers(248, 258))
        segments.append(unit * (target // unit_bytes) + "s" * (target % unit_bytes))
    key = "/".join(segments)
    total = draw(st.sampled_from([1022, 1023, 1024, 1025, 1026, 1030]))
    used = len(unicodedata.normalize("NFC", key).encode())
    if draw(st.booleans()) and total - used - 1 > 0:
        key += "/" + "t" * (total - used - 1)
    return key


@st.composite
def _one_odd_character(draw: st.DrawFn) -> str:
    """A harmless key with one character the rules are about put in anywhere."""
    key = draw(st.lists(st.text(_safe_char, min_size=1, max_size=6), min_size=1, max_size=4).map("/".join))
    odd = draw(st.sampled_from([*_SPECIAL, "/", ".", "..", "./", "/."]))
    at = draw(st.integers(0, len(key)))
    return key[:at] + odd + key[at:]


_keys = st.one_of(_one_odd_character(), _path_text, _free_text, _near_limits())


@settings(max_examples=1000, deadline=None)
@given(_keys)
def test_gate_matches_reference_model(text: str) -> None:
    assert gate(text) == reference_key(text)


@settings(max_examples=300, deadline=None)
@given(_keys)
def test_gate_is_idempotent(text: str) -> None:
    key = gate(text)
    if key is not None:
        assert canonical_key(key) == key


@settings(max_examples=300, deadline=None)
@given(_keys)
def test_gate_gives_bytes_and_text_the_same_answer(text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8
    assert gate(raw) == reference_key(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=24))
def test_gate_on_arbitrary_bytes(raw: bytes) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        assert gate(raw) is None
    else:
        assert gate(raw) == reference_key(text)
