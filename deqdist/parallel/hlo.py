"""Read a compiled (per-device) HLO program: solver loops, their buffers and their collectives.

Used by the sharding tests and `deqdist bench parallel` to check, on the real
compiled program, that solver state is sharded and how much each loop communicates.
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_CALLS = re.compile(r"(?:calls|body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_WHILE = re.compile(r"=\s*(\(.*?\))\s+while\(.*?condition=%?([\w.\-]+), body=%?([\w.\-]+)")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
# Collectives over size-1 mesh axes stay in the program as no-ops with one device per group.
_TRIVIAL = re.compile(r"replica_groups=(\{(\{\d+\},?)+\}|\[\d+,1\]<=)")
_GROUP_LIST = re.compile(r"(?:replica_groups|source_target_pairs)=\{((?:\{[\d,]*\},?)*)\}")
_GROUP_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")


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


def _executed(comps: dict[str, list[str]], root: str):
    """Lines executed by one run of computation `root` (callees included once each)."""
    seen, stack = set(), [root]
    while stack:
        c = stack.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        for line in comps[c]:
            yield line
            stack += _callees(line)


def _collective(line: str) -> str | None:
    for op in COLLECTIVES:
        if re.search(rf"\s{op}(-start)?\(", line):
            return op
    return None


def collectives_in(comps: dict[str, list[str]], root: str) -> Counter:
    """Collective ops executed by one run of computation `root` (callees included once each)."""
    return Counter(op for line in _executed(comps, root)
                   if (op := _collective(line)) and not _TRIVIAL.search(line))


def device_groups(line: str) -> list[tuple[int, ...]]:
    """The device groups of one collective instruction (explicit or iota `replica_groups`,
    or a permute's source/target pairs); `()` stands for one group of all devices."""
    m = _GROUP_IOTA.search(line)
    if m:
        dims = [int(d) for d in m.group(3).split(",")]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if m.group(4):
            ids = ids.transpose([int(p) for p in m.group(4).split(",")])
        return [tuple(map(int, g)) for g in ids.reshape(int(m.group(1)), int(m.group(2)))]
    m = _GROUP_LIST.search(line)
    if m and not m.group(1):
        return [()]
    if m:
        return [tuple(int(i) for i in g.split(",") if i) for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
    return []


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


def solver_loop_groups(hlo: str, state_shape: tuple[int, ...]) -> list[list[tuple[int, ...]]]:
    """For every while loop that carries `state_shape`: the device groups of each collective
    one iteration (stop test + body) runs, no-op ones included. The devices of one group
    must run the same number of iterations, or the program deadlocks."""
    comps = computations(hlo)
    shape = "[" + ",".join(map(str, state_shape)) + "]"
    return [[g for root in (body, cond) for line in _executed(comps, root) if _collective(line)
             for g in device_groups(line)]
            for tuple_type, cond, body in _WHILE.findall(hlo) if shape in tuple_type]


def has_buffer(hlo: str, shape: tuple[int, ...], dtype: str = "f32") -> bool:
    return f"{dtype}[{','.join(map(str, shape))}]" in hlo
