"""translate_gates.char_loop is the loop regex it replaced, (.{6,}?)\\1{2,} under DOTALL, without the
backtracking: same chunk (leftmost start, shortest period) or None, on random strings over small alphabets
(where loops and near-loops are common) and on loops planted in them."""
import random
import re

from polycap.transforms.protect import find_spans
from polycap.transforms.translate_gates import char_loop, check_repetition

LOOP_RE = re.compile(r"(.{6,}?)\1{2,}", re.DOTALL)


def _regex(text: str) -> str | None:
    m = LOOP_RE.search(text)
    return m.group(1) if m else None


def test_char_loop_equals_the_regex_on_random_and_planted_loops():
    rng = random.Random(7)
    found = 0
    for _ in range(20000):
        alpha = rng.choice(["ab", "abc", "ab \n", "abcdefg", "aab", "가나 "])
        text = "".join(rng.choice(alpha) for _ in range(rng.randint(0, 50)))
        if rng.random() < 0.3:
            chunk = "".join(rng.choice(alpha) for _ in range(rng.randint(6, 12)))
            at = rng.randint(0, len(text))
            text = text[:at] + chunk * rng.randint(2, 4) + text[at:]
        assert char_loop(text) == _regex(text), text
        found += char_loop(text) is not None
    assert found > 1000     # the comparison covered many real loops, not only their absence


def test_looping_output_is_still_a_repetition():
    src = "The weather is nice today, and the children are playing outside."
    assert check_repetition(src, "날씨가 좋네요 날씨가 좋네요 날씨가 좋네요 날씨가 좋네요") is not None
    assert check_repetition(src, "오늘은 날씨가 좋고 아이들이 밖에서 놀고 있습니다.") is None


def test_find_spans_results_are_fresh_lists():
    first = find_spans("Run %s with --force")
    first.clear()
    assert [s.text for s in find_spans("Run %s with --force")] == ["%s", "--force"]
