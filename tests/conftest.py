"""Suite-wide settings.

Under pytest-xdist (``-n 2`` on a 2-core CI machine) every worker would otherwise use all cores for torch's
intra-op pool, and the oversubscription makes small-tensor tests many times slower. One thread per worker.

Skip accounting for CI (``DYNAMETRIC_CI=1``, set by ``.ci/run``): see the section at the end of this file.
"""

import fnmatch
import os
import re

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _lightning_rank_zero():
    """Every test starts as global rank 0 for Lightning's ``rank_zero_only``: a Trainer built under a launcher's
    environment (``RANK=1`` ...) sets ``rank_zero_only.rank`` from it, and the value outlived the test; a later run
    in the same worker then got the do-nothing experiment of another rank's CSV logger (no ``logs/metrics.csv``;
    seen after ``test_train_processes.py::test_torchrun_with_one_device_is_refused_before_anything_is_written[1]``)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    before = getattr(rank_zero_only, "rank", 0)
    rank_zero_only.rank = 0
    yield
    rank_zero_only.rank = before


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test, restored afterwards: for tiny tensors, intra-op threads only add OpenMP
    barrier stalls on the shared 2-core machine. Directories of tiny-tensor tests use it through an autouse hook."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- skip accounting (CI) ----------------------------------------------------------------------------------------
# With DYNAMETRIC_CI=1 (set by .ci/run): a test marked ``ci_required`` that skips is reported as failed, any skip
# that no ALLOWED_SKIPS entry covers fails the session, and every skip is listed at the end with its reason and
# why CI tolerates it. Without the variable nothing changes (a developer without Chromium still gets a skip).

CI_ENV = "DYNAMETRIC_CI"

# (node-id glob, regex the skip reason must match, why CI tolerates the skip). Keep it short and explained.
ALLOWED_SKIPS: list[tuple[str, str, str]] = [
    ("tests/*", r"(?i)\bCUDA\b|\bGPU\b", "CI machines have no GPU; the CPU path of the same code is tested"),
    ("tests/losses/test_host_reads.py::test_values_and_gradients_equal_those_of_the_code_before*",
     r"git history|not in this checkout",
     "a shallow clone lacks the commit the oracle runs; the losses' values stay pinned against PML in tests/losses"),
]

_skips: list[tuple[str, str]] = []  # (node id, reason), collected where reports are logged (controller under xdist)
_required_passed: list[str] = []


def _ci_mode() -> bool:
    return os.environ.get(CI_ENV, "") not in ("", "0")


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        reason = str(longrepr[2])
        return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
    return str(longrepr)


def _allowance(nodeid: str, reason: str) -> str | None:
    for pattern, reason_re, why in ALLOWED_SKIPS:
        if fnmatch.fnmatchcase(nodeid, pattern) and re.search(reason_re, reason):
            return why
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if (_ci_mode() and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("ci_required") is not None):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} is marked ci_required but was skipped in CI ({CI_ENV} is set): "
                           f"{_skip_reason(report)}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips.append((report.nodeid, _skip_reason(report)))
    elif report.when == "call" and report.passed and "ci_required" in report.keywords:
        _required_passed.append(report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _skips.append((report.nodeid, _skip_reason(report)))


def _unallowed_skips() -> list[tuple[str, str]]:
    return [(nodeid, reason) for nodeid, reason in _skips if _allowance(nodeid, reason) is None]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _ci_mode() and not os.environ.get("PYTEST_XDIST_WORKER") and _unallowed_skips() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _ci_mode():
        return
    tr = terminalreporter
    tr.section("skip accounting (CI)")
    tr.write_line(f"ci_required tests passed: {len(_required_passed)}"
                  + "".join(f"\n  {nodeid}" for nodeid in sorted(_required_passed)))
    tr.write_line(f"skips: {len(_skips)}")
    for nodeid, reason in sorted(_skips):
        why = _allowance(nodeid, reason)
        verdict = f"tolerated: {why}" if why else "NOT ALLOWED in CI (add a reasoned ALLOWED_SKIPS entry or fix it)"
        tr.write_line(f"  {nodeid}: {reason}\n    -> {verdict}", red=why is None)
    if _unallowed_skips():
        tr.write_line(f"{len(_unallowed_skips())} skip(s) not allowed in CI: the session fails", red=True, bold=True)
    tr.write_line("allowed skips (tests/conftest.py ALLOWED_SKIPS): "
                  + "; ".join(f"{pattern} with reason ~ /{reason_re}/ ({why})"
                              for pattern, reason_re, why in ALLOWED_SKIPS))
