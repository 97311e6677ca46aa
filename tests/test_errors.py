"""scaling.errors.closest: the one "did you mean" lookup used by every BadInput message."""
from __future__ import annotations

import itertools

from scaling.errors import closest


def test_closest_suggests_or_says_nothing():
    assert closest("batch_sise", {"batch_size", "epochs", "lr"}) == "did you mean 'batch_size'? "
    assert closest("zzz", ["batch_size", "epochs"]) == ""
    assert closest("x", []) == ""


def test_closest_does_not_depend_on_the_order_of_the_choices():
    """'abc' is equally close to 'abd', 'abe' and 'abf': the answer is the same whatever
    order (list, set, dict) the choices come in."""
    choices = ["abd", "abe", "abf", "xyz"]
    answers = {closest("abc", order) for order in itertools.permutations(choices)}
    answers |= {closest("abc", set(choices)), closest("abc", dict.fromkeys(reversed(choices)))}
    assert len(answers) == 1 and answers.pop().startswith("did you mean 'ab")
