"""The grader's answer-comparison policy: wrong answers it must reject, right ones in other forms it must accept,
and a time limit that holds in any thread (trl_justrl.grading.grader)."""

from __future__ import annotations

import threading
import time

import pytest

from trl_justrl.grading.grader import extract_answer, grade_answer, grade_many, normalize_answer, order_free


def boxed(answer: str) -> str:
    return f"Some reasoning.\n\nSo the final answer is $\\boxed{{{answer}}}$."


# (prediction, gold, problem text or None): each must be graded wrong
WRONG = [
    # ordered answers are not sets; multiplicity counts
    ("1, 5", "5,1", "Find the minimum and the maximum of f(x) on [0, 2]."),
    ("7500, 2500", "2500,7500", "What are the smallest and largest possible areas?"),
    ("-2", "-2,-2", "Determine a and b."),
    ("16, 3, 1", "16,3,1,1", None),
    ("3, 1", "1, 3", None),
    ("(2,4)", "(4,2)", None),
    ("(1,8,19), (2,7,13)", "(1,8,19), (2,7,13), (4,5,7)", "Find all triples."),
    ("\\{6,31,-1\\}", "(6,31,-1)", None),
    ("(1, 2)", "\\{1, 2\\}", None),
    ("\\{5, 1\\}", "5,1", "Find the minimum and the maximum."),
    # number bases and unit powers
    ("52_9", "52_8", None),
    ("40_{10}", "40_9", None),
    ("864 \\mbox{ inches}^3", "864 \\mbox{ inches}^2", None),
    ("12 \\text{ cm}^2", "12 \\text{ cm}^3", None),
    # partial parses: a sign outside a sum of symbols, hedges, very deep nests
    ("-(\\frac{1}{3} E_{1}+\\frac{2}{3} E_{2})", "\\frac{1}{3} E_{1}+\\frac{2}{3} E_{2}", None),
    ("5.4 \\text{ cents} \\text{ or } 5.5 \\text{ cents}", "5.4", None),
    ("3 or 4", "3", None),
    ("\\frac{1}{" * 200 + "2" + "}" * 200, "\\frac{1}{2}", None),
    # decimals within a relative 1e-6, not 6 decimal places
    (".0000673", ".0000672", None),
    ("0.0000001", "0.0000002", None),
    ("3.1416", "\\pi", None),
    # huge exact numbers are compared exactly
    ("123456789", "2024^{4046}", None),
    ("1000001", "1000000", None),
    ("2^{99}+1", "2^{99}", None),
    ("2^{1009}+1", "2^{1009}", None),  # golds released in OlympiadBench and CMIMC25, each answered one too high
    ("\\frac{100!}{2^{50}}+1", "\\frac{100!}{2^{50}}", None),
    ("2024^{4046}+1", "2024^{4046}", None),
]

# (prediction, gold, problem text or None): each must be graded right
RIGHT = [
    # e-notation golds (Minerva)
    ("3000000", "3e6", None),
    ("1 \\times 10^{-5}", "1e-5", None),
    ("4.5 \\times 10^{33}", "4.5e33", None),
    ("8.7 \\times 10^{8}", "8.7e8", None),
    # notation only
    ("6 - 5 \\cdot i", "6 - 5i", None),
    ("10,\\!080", "10080", None),
    ("10,080", "10080", None),
    ("-1.5", "-3./2", None),
    ("137 1/2", "\\frac{275}{2}", None),
    ("137 \\frac{1}{2}", "137.5", None),
    ("y = M^6", "y = M^{6}", None),
    ("\\text {red}", "\\text{red}", None),
    ("Evelyn", "\\text{Evelyn}", None),
    ("\\dfrac{3}{56}", "\\frac{3}{56}", None),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", None),
    # symbolic and numeric equivalence
    ("0.5", "\\frac{1}{2}", None),
    ("\\frac12", "0.5", None),
    ("2\\sqrt{2}", "\\sqrt{8}", None),
    ("\\frac{\\sqrt{13}}{2}", "\\frac{1}{2}\\sqrt{13}", None),
    ("0.49", "0.490", None),
    ("2^{25} \\cdot 26!", "2^{25} \\cdot 26!", None),
    ("x = 5", "5", None),
    ("\\frac{1}{" * 4 + "2" + "}" * 4, "2", None),
    # lists in any order where the problem asks for all, or the gold is a set
    ("1, 5", "5,1", "Find all real x such that x^2 - 6x + 5 = 0."),
    ("\\frac{-1-\\sqrt{17}}{2}, \\frac{-1+\\sqrt{17}}{2}", "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}",
     "Compute all possible values of a."),
    ("\\{1, 5\\}", "\\{5, 1\\}", None),
    ("(2,4), (1,3)", "(1,3), (2,4)", "Find all pairs (m, n)."),
    # units may be left out
    ("864", "864 \\mbox{ inches}^2", None),
    ("90", "90^\\circ", None),
]


@pytest.mark.parametrize(("pred", "gold", "problem"), WRONG)
def test_wrong_answers_are_rejected(pred, gold, problem):
    assert not grade_answer(boxed(pred), gold, problem=problem, timeout_s=2)


@pytest.mark.parametrize(("pred", "gold", "problem"), RIGHT)
def test_right_answers_in_other_forms_are_accepted(pred, gold, problem):
    assert grade_answer(boxed(pred), gold, problem=problem, timeout_s=2)


def test_box_extraction_variants():
    assert extract_answer("a \\boxed {7} b") == "7"
    assert extract_answer("\\fbox{x^{2}}") == "x^{2}"
    assert extract_answer("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("no box") is None and extract_answer("\\boxed{open") is None
    assert grade_answer("\\boxed {7}", "7") and grade_answer("\\fbox{7}", "7")
    assert not grade_answer("the answer is 7", "7")


def test_notation_normalisation():
    assert normalize_answer("$10,\\!080$") == "10080"
    assert normalize_answer("4.5e33") == "4.5\\times10^{33}"
    assert normalize_answer("-3./2") == "-3/2"
    assert normalize_answer("-2 \\frac{1}{4}") == "-\\frac{9}{4}"
    assert normalize_answer("\\text {blue}") == "blue"


def test_order_free_problems():
    assert order_free("Find all real numbers x such that ...")
    assert order_free("Enter all the solutions, separated by commas.")
    assert not order_free("Find the minimum and the maximum.") and not order_free(None)


def test_released_list_golds_accept_themselves_reversed_only_when_order_free():
    gold, problem = "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}", "Compute all possible values of a+b+c."
    reverse = "\\frac{-1-\\sqrt{17}}{2}, \\frac{-1+\\sqrt{17}}{2}"
    assert grade_answer(boxed(reverse), gold, problem=problem)
    assert not grade_answer(boxed(reverse), gold, problem="Give a and b, in this order.")


def test_time_limit_and_symbolic_grading_hold_in_a_worker_thread():
    results = {}

    def run():
        results["symbolic"] = grade_answer(boxed("0.5"), "\\frac{1}{2}")
        results["wrong"] = grade_answer(boxed("0.6"), "\\frac{1}{2}")
        start = time.monotonic()
        results["tower"] = grade_answer(boxed("9^{9^{9^{9^{9}}}}"), "1", timeout_s=1)
        results["tower_s"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(180)
    assert results["symbolic"] is True and results["wrong"] is False  # not the exact-string fallback
    assert results["tower"] is False and results["tower_s"] < 60  # bounded: the helper's deadline, not sympy


def test_grade_many_on_several_processes_equals_one_by_one():
    items = [(boxed(pred), gold, problem) for pred, gold, problem in RIGHT + WRONG] * 3
    expected = [grade_answer(r, g, problem=p, timeout_s=2) for r, g, p in items]
    assert grade_many(items, timeout_s=2, processes=2) == expected
    assert grade_many(items[:5], timeout_s=2, processes=1) == expected[:5]
