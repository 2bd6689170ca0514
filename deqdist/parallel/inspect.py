"""Read a compiled (per-device) HLO program: solver loops, their buffers and their collectives.

Used by the sharding tests and `deqdist bench parallel` to check, on the real
compiled program, that solver state is sharded and how much each loop communicates.
"""
from __future__ import annotations

import re
from collections import Counter

_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_CALLS = re.compile(r"(?:calls|body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_WHILE = re.compile(r"=\s*(\(.*?\))\s+while\(.*?condition=%?([\w.\-]+), body=%?([\w.\-]+)")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
# Collectives over size-1 mesh axes stay in the program as no-ops with one device per group.
_TRIVIAL = re.compile(r"replica_groups=(\{(\{\d+\},?)+\}|\[\d+,1\]<=)")


def computations(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        m = _COMP.match(line)
        if m:
            name = m.group(1)
            comps[name] = []
        elif line.strip() == "}":
            name = None
        elif name is not None:
            comps[name].append(line)
    return comps


def _callees(line: str) -> list[str]:
    out = _CALLS.findall(line)
    for group in _BRANCHES.findall(line):
        out += [c.strip().lstrip("%") for c in group.split(",")]
    return out


def collectives_in(comps: dict[str, list[str]], root: str) -> Counter:
    """Collective ops executed by one run of computation `root` (callees included once each)."""
    seen, stack, count = set(), [root], Counter()
    while stack:
        c = stack.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for line in comps[c]:
            for op in COLLECTIVES:
                if re.search(rf"\s{op}(-start)?\(", line) and not _TRIVIAL.search(line):
                    count[op] += 1
            stack += _callees(line)
    return count


def solver_loops(hlo: str, state_shape: tuple[int, ...]) -> list[Counter]:
    """Collectives per iteration (stop test + body) of every while loop that carries
    `state_shape` and communicates.

    (Loops that carry the state but do not communicate are the blocked passes nested
    inside a solver iteration.)
    """
    comps = computations(hlo)
    shape = "[" + ",".join(map(str, state_shape)) + "]"
    loops = []
    for tuple_type, cond, body in _WHILE.findall(hlo):
        if shape in tuple_type:
            c = collectives_in(comps, body) + collectives_in(comps, cond)
            if sum(c.values()):
                loops.append(c)
    return loops


def has_buffer(hlo: str, shape: tuple[int, ...], dtype: str = "f32") -> bool:
    return f"{dtype}[{','.join(map(str, shape))}]" in hlo
