"""Bech32m (BIP 350): the checksummed text form for identifiers (spec/01-identity.md).

Bech32m guarantees to detect any error of up to four substituted characters
and has a 1-in-10^9 chance of missing anything worse; its alphabet omits the
look-alikes ``1 b i o``. Starling uses it for every identifier a person may
copy by hand: peer IDs (prefix ``sp``) and, later, community keys.

Only whole 32-byte identifiers are encoded here, so the decoder also checks
the exact length and that the padding bits are zero [ID-R7].
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import ErrorCode, IdentityError

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHAR_VALUE = {c: i for i, c in enumerate(CHARSET)}
_BECH32M_CONST = 0x2BC830A3
_GENERATORS = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i, g in enumerate(_GENERATORS):
            if (top >> i) & 1:
                chk ^= g
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _to_5bit(data: bytes) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append((acc >> bits) & 31)
    if bits:
        out.append((acc << (5 - bits)) & 31)
    return out


def encode(hrp: str, data: bytes) -> str:
    """``hrp`` + ``1`` + data in 5-bit groups + six checksum characters, lowercase."""
    values = _to_5bit(data)
    polymod = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ _BECH32M_CONST
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[v] for v in values + checksum)


def decode(text: str, hrp: str, size: int, what: str) -> bytes:
    """Parse ``text`` as the bech32m form of ``size`` bytes under prefix ``hrp``.

    Checks, in this order: ASCII only [ID-R5], one case only [ID-R4], the prefix
    [ID-R5], the alphabet [ID-R5], the length [ID-R6], the checksum [ID-R6], zero
    padding bits [ID-R7].
    """
    data_chars = (size * 8 + 4) // 5

    def length_ok(body: str) -> str | None:
        if len(body) == data_chars + 6:
            return None
        return f"{what} has {len(body)} characters after '{hrp}1', expected {data_chars + 6}"

    return _decode(text, hrp, what, length_ok)


def decode_bytes(text: str, hrp: str, max_size: int, what: str) -> bytes:
    """Parse ``text`` as the bech32m form of any number of bytes up to ``max_size``.

    The same rules as :func:`decode` in the same order, but for data of variable
    length (invite codes, spec/06-community.md): the length check of step 5 asks
    for at least one data character, at most ``max_size`` bytes' worth, and a data
    part whose bits beyond the last whole byte are fewer than five (a character
    more would carry no byte) [ID-R6]; the padding bits must be zero [ID-R7].
    """

    def length_ok(body: str) -> str | None:
        data_chars = len(body) - 6
        if data_chars >= 1 and data_chars * 5 // 8 <= max_size and data_chars * 5 % 8 < 5:
            return None
        return (
            f"{what} has {len(body)} characters after '{hrp}1', which is no whole number of "
            f"bytes between 1 and {max_size}"
        )

    return _decode(text, hrp, what, length_ok)


def _decode(text: str, hrp: str, what: str, length_ok: Callable[[str], str | None]) -> bytes:
    """The checks of :func:`decode` in order; ``length_ok`` judges the data part's
    length (None: fine; else the error's text)."""
    if not text.isascii():
        bad = next(i for i, ch in enumerate(text) if not ch.isascii())
        raise IdentityError(
            ErrorCode.ID_TEXT_CHARACTER,
            f"{what} has the non-ASCII character {text[bad]!r} at position {bad}",
            "ID-R5",
        )
    # ASCII only from here on, so lower()/upper() cannot fold other scripts into ASCII.
    if text.lower() != text and text.upper() != text:
        raise IdentityError(
            ErrorCode.ID_TEXT_MIXED_CASE, f"{what} mixes upper and lower case", "ID-R4"
        )
    text = text.lower()
    sep = text.rfind("1")
    if sep < 1 or text[:sep] != hrp:
        raise IdentityError(ErrorCode.ID_TEXT_PREFIX, f"{what} must start with '{hrp}1'", "ID-R5")
    body = text[sep + 1 :]
    for i, ch in enumerate(body):
        if ch not in _CHAR_VALUE:
            raise IdentityError(
                ErrorCode.ID_TEXT_CHARACTER,
                f"{what} has {ch!r} at position {sep + 1 + i}, not in the bech32 alphabet",
                "ID-R5",
            )
    problem = length_ok(body)
    if problem is not None:
        raise IdentityError(ErrorCode.ID_TEXT_LENGTH, problem, "ID-R6")
    values = [_CHAR_VALUE[ch] for ch in body]
    if _polymod(_hrp_expand(hrp) + values) != _BECH32M_CONST:
        raise IdentityError(
            ErrorCode.ID_TEXT_CHECKSUM, f"{what} checksum does not match (a typo?)", "ID-R6"
        )
    acc = bits = 0
    out = bytearray()
    for v in values[:-6]:
        acc = (acc << 5) | v
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if acc & ((1 << bits) - 1):
        raise IdentityError(ErrorCode.ID_TEXT_PADDING, f"{what} has non-zero padding bits", "ID-R7")
    return bytes(out)
