"""Kubernetes-style label selectors over plain label dicts."""

from __future__ import annotations

from fluidfed.models import LabelSelector, SelectorRequirement


def requirement_matches(req: SelectorRequirement, labels: dict[str, str]) -> bool:
    present = req.key in labels
    if req.operator == "In":
        return present and labels[req.key] in req.values
    if req.operator == "NotIn":
        return not present or labels[req.key] not in req.values
    if req.operator == "Exists":
        return present
    return not present  # DoesNotExist


def matches(selector: LabelSelector, labels: dict[str, str]) -> bool:
    """True when every match_labels pair and every expression holds (empty matches all)."""
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    return all(requirement_matches(r, labels) for r in selector.match_expressions)


def parse(text: str) -> LabelSelector:
    """`a=b,c!=d,e in (x,y),f notin (z),g,!h` as kubectl writes selectors."""
    match_labels: dict[str, str] = {}
    exprs: list[SelectorRequirement] = []
    for part in _split_top(text):
        part = part.strip()
        if not part:
            continue
        low = part.lower()
        for word, op in ((" notin ", "NotIn"), (" in ", "In")):
            if word in low:
                i = low.index(word)
                key, rest = part[:i].strip(), part[i + len(word) :].strip()
                if not (rest.startswith("(") and rest.endswith(")")):
                    raise ValueError(f"{part!r}: values must be in parentheses, e.g. (a,b)")
                values = [v.strip() for v in rest[1:-1].split(",") if v.strip()]
                exprs.append(SelectorRequirement(key=key, operator=op, values=values))  # type: ignore[arg-type]
                break
        else:
            if "!=" in part:
                key, value = (s.strip() for s in part.split("!=", 1))
                exprs.append(SelectorRequirement(key=key, operator="NotIn", values=[value]))
            elif "=" in part:
                key, value = (s.strip() for s in part.split("=", 1))
                match_labels[key] = value.lstrip("=").strip()
            elif part.startswith("!"):
                exprs.append(SelectorRequirement(key=part[1:].strip(), operator="DoesNotExist"))
            else:
                exprs.append(SelectorRequirement(key=part, operator="Exists"))
    return LabelSelector(match_labels=match_labels, match_expressions=exprs)


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts
