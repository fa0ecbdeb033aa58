"""One rule for the text users and strangers' files hand us: names, labels and free text.

Text ends up in terminals, file names, SQLite keys and web pages. A name with a terminal escape code rewrites the
user's screen, a bidi override makes `evil.flx` read as `xlf.live`, a zero-width space makes two names that look the
same differ. So every name and every stored text field goes through `check_name` / `check_text` where it enters
(CLI arguments, `.flx` documents, profiles, job files), and everything printed goes through `printable`.

Refused everywhere: Unicode "other" characters (category C*: C0/C1 controls and DEL, format characters such as bidi
overrides, zero-width spaces and the BOM, surrogates - which is what undecodable bytes in a file name become -
private-use and unassigned code points) and line/paragraph separators. Names also refuse every space but U+0020 and
are NFC-normalised; free text may hold newlines and tabs when it is multi-line.
"""

from __future__ import annotations

import unicodedata

from .errors import InputError

MAX_NAME_LEN = 100
MAX_LABEL_LEN = 500  # tags, variant labels, model ids, one-line profile fields (wardrobe, makeup)
MAX_TEXT_LEN = 4000  # free text (notes, descriptions, prompts)


def _bad(ch: str, *, multiline: bool, name: bool) -> bool:
    if multiline and ch in "\n\t":
        return False
    cat = unicodedata.category(ch)
    if cat[0] == "C" or cat in ("Zl", "Zp"):
        return True
    return name and cat == "Zs" and ch != " "


def first_bad_char(text: str, *, multiline: bool = False, name: bool = False) -> str | None:
    """The first refused character of `text`, or None."""
    return next((ch for ch in text if _bad(ch, multiline=multiline, name=name)), None)


def describe_char(ch: str) -> str:
    """`U+202E (RIGHT-TO-LEFT OVERRIDE)`: a refused character named so that the message itself is safe to print."""
    return f"U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed or control character')})"


def printable(text: object, *, limit: int | None = None, multiline: bool = False) -> str:
    """`text` with every refused character replaced by a visible escape (`\\x1b`, `\\u202e`): safe for a terminal."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "…"
    out = []
    for ch in s:
        if _bad(ch, multiline=multiline, name=False):
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out)


def check_name(value: object, what: str = "character name", *, max_len: int = MAX_NAME_LEN) -> str:
    """A name: trimmed, NFC-normalised, 1-`max_len` printable characters, spaces only U+0020. Raises `InputError`."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} is empty: give a name such as `ava`")
    bad = first_bad_char(value, name=True)
    if bad is not None:
        raise InputError(
            f"{what} {printable(value, limit=40)!r} contains {describe_char(bad)}: use printable characters only"
        )
    name = unicodedata.normalize("NFC", value.strip())
    if len(name) > max_len:
        raise InputError(
            f"{what} {printable(name, limit=40)!r}... is {len(name)} characters long: use at most {max_len}"
        )
    return name


def check_text(value: object, what: str, *, max_len: int = MAX_TEXT_LEN, multiline: bool = True) -> str:
    """Free text (profile fields, notes, file names as recorded): at most `max_len` characters, no refused ones."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be text (got {type(value).__name__})")
    if len(value) > max_len:
        raise InputError(f"{what} is {len(value)} characters long: use at most {max_len}")
    bad = first_bad_char(value, multiline=multiline)
    if bad is not None:
        raise InputError(f"{what} {printable(value, limit=40)!r} contains {describe_char(bad)}: remove it")
    return value


def name_key(name: str) -> str:
    """The key two names collide on: NFKC + case folding (`Ülla` = `ülla` = `ÜLLA`, `ﬁ` = `fi`)."""
    return unicodedata.normalize("NFKC", name).casefold()


__all__ = [
    "MAX_LABEL_LEN",
    "MAX_NAME_LEN",
    "MAX_TEXT_LEN",
    "check_name",
    "check_text",
    "describe_char",
    "first_bad_char",
    "name_key",
    "printable",
]
