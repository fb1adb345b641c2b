"""The ONNX project's backend node tests, run against our torch executor.

`claimed_node_tests()` lists the node test cases that `onnx` ships whose graphs use
only operators we implement and tensor types we accept (numbers and bools; no
strings, no 8- or 4-bit floats). `run_conformance()` drives them through
`onnx.backend.test.BackendTest` with `OnnxBackend` and reports passed/total with the
failures, unedited.
"""

from __future__ import annotations

import io
import re
import unittest
from dataclasses import dataclass, field

ALLOWED_ELEM_TYPES = {1, 2, 3, 5, 6, 7, 9, 10, 11}
"""FLOAT, UINT8, INT8, INT16, INT32, INT64, BOOL, FLOAT16, DOUBLE."""


@dataclass
class ConformanceResult:
    """How many claimed node tests passed, and which failed with what."""

    passed: int
    total: int
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return f"{self.passed}/{self.total}"


def _types_ok(model: object) -> bool:
    g = model.graph  # type: ignore[attr-defined]
    for vi in [*g.input, *g.output]:
        t = vi.type
        if not t.HasField("tensor_type"):
            return False  # sequences, optionals, maps
        if t.tensor_type.elem_type not in ALLOWED_ELEM_TYPES:
            return False
    return all(init.data_type in ALLOWED_ELEM_TYPES for init in g.initializer)


def claimed_node_tests(ops: frozenset[str] | None = None) -> list[str]:
    """Names (like "test_conv_with_strides_padding") of node tests we claim to pass."""
    from onnx.backend.test.loader import load_node_model_tests

    from deeproom.models.onnx_ops import SUPPORTED_OPS

    ops = SUPPORTED_OPS if ops is None else ops
    names = []
    for case in load_node_model_tests():
        m = case.model
        if m is None:
            continue
        nodes = list(m.graph.node)
        if not nodes or any(n.domain not in ("", "ai.onnx") or n.op_type not in ops for n in nodes):
            continue
        if any(a.type in (5, 10) and n.op_type != "If" for n in nodes for a in n.attribute):  # subgraphs: If only
            continue
        if not _types_ok(m):
            continue
        names.append(case.name)
    return sorted(set(names))


def run_conformance(names: list[str] | None = None) -> ConformanceResult:
    """Run the named (default: all claimed) node tests; returns passed/total and failures."""
    import onnx.backend.test

    from deeproom.models.onnx_exec import OnnxBackend

    names = claimed_node_tests() if names is None else names
    if not names:
        return ConformanceResult(0, 0)
    bt = onnx.backend.test.BackendTest(OnnxBackend, "deeproom_conformance")
    wanted = set(names)
    # BackendTest names cases "<test>_cpu"; include each by exact name
    for n in names:
        bt.include("^" + re.escape(n) + "_cpu$")
    suite = unittest.TestSuite()
    loader = unittest.TestLoader()
    for case in bt.test_cases.values():
        suite.addTests(loader.loadTestsFromTestCase(case))
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
    failures = [(t.id().rsplit(".", 1)[-1], msg.strip().splitlines()[-1][:300]) for t, msg in [*result.failures, *result.errors]]
    skipped = {t.id().rsplit(".", 1)[-1] for t, _ in result.skipped}
    total = result.testsRun - len(skipped)
    del wanted
    return ConformanceResult(total - len(failures), total, failures)
