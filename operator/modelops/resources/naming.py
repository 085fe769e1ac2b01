"""Deterministic, length-safe names for the objects the operator creates."""

from __future__ import annotations

import hashlib
import re

DNS_LABEL_MAX = 63


def dns_label(base: str, suffix: str = "", *, limit: int = DNS_LABEL_MAX, hashed: bool = False) -> str:
    """`base` + `suffix` as a valid DNS-1123 label of at most `limit` characters.

    Too-long or dotted bases (or any, with `hashed`) are shortened deterministically with a hash of the
    full base, so the same inputs always give the same name and different bases stay distinct.
    """
    clean = re.sub(r"[^a-z0-9-]", "-", base.lower()).strip("-") or "x"
    room = limit - len(suffix)
    if clean == base and len(clean) <= room and not hashed:
        return clean + suffix
    digest = hashlib.sha256(base.encode()).hexdigest()[:5]
    return f"{clean[:room - 6].rstrip('-')}-{digest}{suffix}"


def dns1035_label(base: str, suffix: str = "") -> str:
    """Like dns_label but starting with a letter, as Service names must. A base that does not gets a
    letter and a hash, so it never lands on the name another base gives unchanged ("1a" is not "s1a")."""
    name = dns_label(base, suffix)
    return name if name[0].isalpha() else dns_label("s" + base, suffix, hashed=True)
