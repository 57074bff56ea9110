"""Pure-Python oracle for topic-exchange matching (recursive, obviously correct)."""

from __future__ import annotations


def topic_matches_ref(pattern: str, key: str) -> bool:
    pw = pattern.split(".") if pattern else []
    kw = key.split(".") if key else []

    def go(i: int, j: int) -> bool:
        if i == len(pw):
            return j == len(kw)
        w = pw[i]
        if w == "#":
            return any(go(i + 1, k) for k in range(j, len(kw) + 1))
        if j == len(kw):
            return False
        return (w == "*" or w == kw[j]) and go(i + 1, j + 1)

    return go(0, 0)
