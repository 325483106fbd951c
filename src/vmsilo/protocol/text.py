"""One cleaning for every string a guest sends that the host shows to the user.

Window titles and app ids, tray titles and tooltips, notification summaries and bodies, menu
names: whatever a VM controls that ends up in a line of host UI goes through
``clean_display_text`` first, so a guest can neither break a line ("title\\u2028[banking]"),
reorder what is drawn (bidi overrides and isolates) nor hide characters (zero-width and other
invisible format characters) in it. Both halves of a boundary import it from here: it has no
dependency beyond the standard library.
"""

from __future__ import annotations

import unicodedata

# Unicode general categories (UAX #44, "General_Category Values") and what becomes of them.
# Anything that breaks a line becomes one space, so the words on either side stay apart:
#   Cc  control: C0 (U+0000-U+001F: NUL, TAB, LF, CR, ESC, ...), DEL and C1 (U+007F-U+009F,
#       among them NEL U+0085)
#   Zl  line separator (U+2028)
#   Zp  paragraph separator (U+2029)
_TO_SPACE = frozenset({"Cc", "Zl", "Zp"})
# Anything invisible is dropped:
#   Cf  format: every bidirectional control (LRM/RLM U+200E/F, ALM U+061C, the embeddings and
#       overrides U+202A-U+202E, the isolates U+2066-U+2069), zero-width space/joiners
#       (U+200B-U+200D), word joiner and invisible operators (U+2060-U+2064), BOM U+FEFF,
#       soft hyphen U+00AD, interlinear annotations U+FFF9-U+FFFB, tag characters (U+E0001,
#       U+E0020-U+E007F), ...
#   Cs  surrogate: only a lone one can appear in a Python str (from JSON "\\ud800" or
#       surrogateescape); it has no UTF-8 form, so it must not reach a writer that encodes.
_DROPPED = frozenset({"Cf", "Cs"})


def clean_display_text(untrusted: str, *, max_len: int) -> str:
    """Return ``untrusted`` as one line of visible text, at most ``max_len`` code points.

    Characters of category Cc, Zl or Zp become a space; characters of category Cf or Cs are
    removed (see the tables above for what these hold). Everything else — letters, marks,
    digits, punctuation, symbols, ordinary spaces, private-use and unassigned code points — is
    kept as is, so text with none of those characters is returned unchanged (only cut to
    ``max_len``). The result has no line break for ``str.splitlines`` or any renderer, encodes
    to UTF-8, and cleaning it again changes nothing (``clean(clean(x)) == clean(x)``).

    ``max_len`` counts code points (``len`` of the result); a caller with a byte budget cuts
    the encoded result itself. Raises ``ValueError`` if ``max_len`` is negative.
    """
    if max_len < 0:
        raise ValueError(f"max_len must be 0 or more, not {max_len}")
    out: list[str] = []
    for ch in untrusted:
        if len(out) >= max_len:
            break
        category = unicodedata.category(ch)
        if category in _TO_SPACE:
            out.append(" ")
        elif category not in _DROPPED:
            out.append(ch)
    return "".join(out)
