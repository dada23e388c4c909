"""The submission catalogue of assignment 2 (the credit scheduler), graded by the real pipeline;
per-student variants and deterministic re-grading."""

from __future__ import annotations

import pytest

from autograder.assignments import a2_credit_scheduler as a2
from autograder.grade import NotebookResult

A2 = "a2_credit_scheduler"
FULL = {"credit_accounting": 15.0, "credit_boost": 10.0, "credit_caps": 10.0,
        "credit_multi_pcpu": 10.0}


def test_correct_solution_scores_full_marks(course, ag):
    result = course.grade_cells(A2, ag.submission_cells(A2))
    assert ag.scores(result) == {gid: (pts, "ok") for gid, pts in FULL.items()}
    assert result.score == 45


def test_ignoring_caps_and_not_stealing_cost_only_those_parts(course, ag):
    result = course.grade_cells(A2, ag.submission_cells(A2, "a2_ignores_caps.py",
                                                        "a2_no_steal.py"))
    got = ag.scores(result)
    assert got["credit_accounting"] == (15.0, "ok")
    assert got["credit_boost"] == (10.0, "ok")
    caps = result.part("credit_caps")
    assert caps.score == 0
    assert all("more than its cap" in c.message for c in caps.checks)
    multi = result.part("credit_multi_pcpu")
    assert multi.score < 10
    failed = [c for c in multi.checks if not c.passed]
    assert any("idle" in c.message or "busy" in c.message for c in failed)


def test_infinite_loop_reached_only_by_capped_workloads_costs_the_caps_part(course, ag,
                                                                         monkeypatch):
    monkeypatch.setattr(a2, "CASE_TIMEOUT", 1.0)  # the per-case budget sent to the worker
    result = course.grade_cells(A2, ag.submission_cells(A2, "a2_caps_loop.py"))
    got = ag.scores(result)
    assert got["credit_caps"] == (0.0, "timeout")
    assert "longer than 1 s" in result.part("credit_caps").reason
    assert got["credit_accounting"] == (15.0, "ok")
    assert got["credit_boost"] == (10.0, "ok")
    assert got["credit_multi_pcpu"] == (10.0, "ok")


def test_calling_the_reference_scores_zero_where_it_is_used(course, ag):
    result = course.grade_cells(A2, ag.submission_cells(A2, "a2_calls_reference.py"))
    caps = result.part("credit_caps")  # the scan flags the cell
    assert (caps.score, caps.status) == (0.0, "integrity")
    assert "[reference]" in caps.reason and "virtcore.sched.credit_shares" in caps.reason
    for gid in ("credit_accounting", "credit_boost", "credit_multi_pcpu"):
        part = result.part(gid)  # the cell ran for these parts, and the reference was off
        assert (part.score, part.status) == (0.0, "integrity"), gid
        assert "credit_shares" in part.reason


@pytest.fixture(scope="module")
def no_boost(course, ag) -> dict[str, NotebookResult]:
    cells = ag.submission_cells(A2, "a2_no_boost.py")
    path = course.submit(A2, "shared", ag.notebook(A2, cells))
    return {"alice": course.grade(A2, path, "alice"), "bob": course.grade(A2, path, "bob"),
            "alice again": course.grade(A2, path, "alice")}


def test_no_boost_loses_only_the_boost_part(no_boost):
    result = no_boost["alice"]
    boost = result.part("credit_boost")
    assert boost.score < 5
    assert any("waited" in c.message and "BOOST" in c.message for c in boost.checks)
    assert {p.grade_id: p.score for p in result.parts if p.grade_id != "credit_boost"} == {
        gid: pts for gid, pts in FULL.items() if gid != "credit_boost"}


def test_students_get_different_hidden_cases_and_regrading_is_identical(no_boost):
    alice, bob, again = no_boost["alice"], no_boost["bob"], no_boost["alice again"]

    def hidden_seed(r: NotebookResult) -> str | None:
        # the seed is in the instructor's field only, never in the student's message
        c = next(c for c in r.part("credit_boost").checks if c.hidden)
        assert c.seed is None and "seed=" not in c.message
        return c.instructor.split("seed=")[1].split(")")[0] if "seed=" in c.instructor else None

    assert hidden_seed(alice) is not None and hidden_seed(bob) is not None
    assert hidden_seed(alice) != hidden_seed(bob)
    strip = lambda r: {**r.to_json(), "seconds": 0}  # noqa: E731
    assert strip(again) == strip(alice)
    visible = {c.name: c.message for c in alice.part("credit_boost").checks if not c.hidden}
    assert visible == {c.name: c.message for c in bob.part("credit_boost").checks
                       if not c.hidden}


# ------------------------------------------------ the grader drives, the sandbox answers


def _worker_leftovers() -> list[str]:
    """Workers still alive: one-off workers, or children of a preloaded worker (zygote)."""
    import os
    from pathlib import Path

    procs: dict[int, tuple[int, bytes]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(pid)] = (ppid, cmd)
    out = []
    def python(cmd: bytes) -> bool:  # not bwrap (a sandbox is bwrap, bwrap, then python)
        return not os.path.basename(cmd.split(b"\0", 1)[0]).startswith(b"bwrap")

    for pid, (ppid, cmd) in procs.items():
        parent = procs.get(ppid, (0, b""))[1]
        child_of_zygote = (b"zygote_main" in cmd and python(cmd) and b"zygote_main" in parent
                           and python(parent))
        if (b"w.main(" in cmd and python(cmd)) or child_of_zygote:
            out.append(f"{pid}: {cmd[:120]!r}")
    return out


@pytest.mark.parametrize("forger", ["a2_forges_results.py", "a2_forges_protocol.py",
                                    "a2_bad_decisions.py"])
def test_forged_results_and_illegal_decisions_score_what_a_blank_scores(course, ag, forger):
    # the cases never reach the sandbox, traces from the worker are not part of the protocol,
    # replies answer requests, and every decision is checked by the grader's own simulator
    result = course.grade_cells(A2, ag.submission_cells(A2, forger))
    assert result.score == 0, ag.scores(result)
    assert all(p.score == 0 for p in result.parts)
    if forger == "a2_bad_decisions.py":
        for part in result.parts:
            assert part.status == "ok" and not any(c.passed for c in part.checks)
            assert all("InvalidDecisionError" in c.message for c in part.checks), part


def test_a_hook_that_raises_fails_only_its_cases(course, ag):
    result = course.grade_cells(A2, ag.submission_cells(A2, "a2_caps_raises.py"))
    got = ag.scores(result)
    assert got["credit_caps"] == (0.0, "ok")
    assert all("ValueError: caps are not supported" in c.message
               for c in result.part("credit_caps").checks)
    assert {gid: got[gid] for gid in got if gid != "credit_caps"} == {
        gid: (pts, "ok") for gid, pts in FULL.items() if gid != "credit_caps"}


@pytest.mark.parametrize(("variant", "status"), [("a2_caps_sleeps.py", "timeout"),
                                                 ("a2_caps_floods.py", "crashed")])
def test_a_worker_that_never_answers_or_floods_loses_only_that_part(course, ag, monkeypatch,
                                                                    variant, status):
    monkeypatch.setattr(a2, "CASE_TIMEOUT", 1.0)  # the grader waits 1 + 5 s for a reply
    result = course.grade_cells(A2, ag.submission_cells(A2, variant))
    got = ag.scores(result)
    assert got["credit_caps"] == (0.0, status), result.part("credit_caps").reason
    if status == "timeout":
        assert "did not answer within 6 s" in result.part("credit_caps").reason
    else:
        assert "sent more than 16 MiB" in result.part("credit_caps").reason
    assert {gid: got[gid] for gid in got if gid != "credit_caps"} == {
        gid: (pts, "ok") for gid, pts in FULL.items() if gid != "credit_caps"}
    assert _worker_leftovers() == []


class _Loopback:
    """A serving worker in this process (:func:`autograder.harness.a2.serve`), with every
    request and reply through JSON as on the pipes."""

    case = None

    def __init__(self, impl) -> None:
        from autograder.harness.a2 import serve

        self.answer = serve(impl)
        self.sent: list[str] = []

    def call(self, request):
        import json

        text = json.dumps(request)
        self.sent.append(text)
        return json.loads(json.dumps({"type": "reply", **self.answer(json.loads(text))}))


@pytest.mark.parametrize("kind", ["accounting", "boost", "caps", "multi"])
@pytest.mark.parametrize("look_ahead", [0, 8])
def test_the_grader_run_is_the_local_run_hook_by_hook(ag, monkeypatch, kind, look_ahead):
    """The grader's simulation with the hooks answered remotely (batched, and with hooks of
    later events sent ahead) gives exactly the trace of the same scheduler run locally."""
    from autograder.harness.a2 import simulate_case
    from virtcore.sched.credit import Credit

    monkeypatch.setattr(a2, "LOOK_AHEAD", look_ahead)
    ns: dict = {"__name__": "__main__"}
    exec(ag.PREAMBLE[A2], ns)
    for source in ag.submission_cells(A2).values():
        exec(source, ns)
    cases = [a2.generated_case(kind, seed) for seed in (101, 102)]
    for impl in (Credit, ns["StudentCredit"]):
        link = _Loopback(impl)
        got = a2.converse(link, cases)
        for case, out in zip(cases, got):
            assert out is not None and "result" in out, out
            assert dict(out["result"]) == simulate_case(impl(), case)
        if look_ahead:
            assert any('["?"]' in text for text in link.sent)


def test_the_sandbox_never_sees_the_workload(monkeypatch):
    """What a serving worker is sent: the task holds no case, and the requests carry the
    machine (pCPUs, domains' names, vCPU counts, weights, caps) and the hooks' arguments —
    never a workload, a phase, a duration of one, or a seed."""
    from autograder.harness.a2 import serve, simulate_case
    from virtcore.sched.credit import Credit

    sent: list[str] = []

    class Loopback:
        case = None

        def __init__(self) -> None:
            self.answer = serve(Credit)

        def call(self, request):
            import json

            text = json.dumps(request)
            sent.append(text)
            return json.loads(json.dumps({"type": "reply", **self.answer(json.loads(text))}))

    case = a2.generated_case("boost", 4)
    shell = next(d for d in case["domains"] if d["name"] == "shell")["workload"]
    (out,) = a2.converse(Loopback(), [case])
    assert out is not None and isinstance(out["result"], a2.OwnTrace)
    assert dict(out["result"]) == simulate_case(Credit(), case)  # the same run, hook by hook
    text = "".join(sent)
    for word in ("workload", "interactive", "burst", "think", "sim_seed", "seed", "label"):
        assert word not in text
    assert str(shell["think_us"]) not in sent[0] and str(shell["burst_us"]) not in sent[0]
    assert len(sent) < 10_000  # hooks travel together up to the simulator's next look


def test_a_reply_breaking_the_protocol_ends_the_conversation_untrusted():
    """A reply whose content the protocol does not allow (here: tickling a pCPU the case does
    not have) is refused through the channel — counted as garbage, so the part's results are
    not trusted — and no case after it is run."""
    from autograder.sandbox import ChannelError

    refused: list[str] = []

    class Liar:
        case = None

        def call(self, request):
            if request[0][0] == "case":
                return {"type": "reply", "t": [], "a": [10_000, 30_000, "Liar"]}
            return {"type": "reply", "t": [99], "d": [None, None]}

        def refuse(self, why):
            refused.append(why)
            return ChannelError(why)

    cases = [a2.generated_case("accounting", 1), a2.generated_case("accounting", 2)]
    assert a2.converse(Liar(), cases) == [None, None]
    assert refused == ["tickled 99, not a pCPU of this case"]
