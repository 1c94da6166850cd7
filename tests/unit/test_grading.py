"""The grader: a table of tricky cases (each row: response, answers, kind, question, correct, echo)."""

import pytest

from riskprobe.prompts.grading import (
    answer_span,
    grade,
    is_correct,
    normalize,
    numbers,
    parse_number,
)

Q_FR = "What is the capital of France?"
Q_CHOICE = "Who wrote Yesterday, John Lennon or Paul McCartney?"
Q_NY = "What is the largest city in New York state?"

CASES = [
    # --- normalisation: case, accents, punctuation, articles, whitespace
    ("paris", ["Paris"], "alias", None, True, False),
    ("PARIS!", ["Paris"], "alias", None, True, False),
    ("It's  Paris .", ["paris"], "alias", None, True, False),
    ("Pele", ["Pelé"], "alias", None, True, False),
    ("Pelé", ["Pele"], "alias", None, True, False),
    ("Bogota", ["Bogotá"], "alias", None, True, False),
    ("The Beatles", ["Beatles"], "alias", None, True, False),
    ("Beatles", ["The Beatles"], "alias", None, True, False),
    ("An apple a day", ["apple"], "alias", None, True, False),
    ("Saint-Exupéry", ["Saint Exupery"], "alias", None, True, False),
    ("O'Neill", ["ONeill"], "alias", None, True, False),
    ("Rock 'n' roll", ["rock n roll"], "alias", None, True, False),
    # --- whole words only
    ("Kelvin", ["K"], "alias", None, False, False),
    ("The symbol is K.", ["K"], "alias", None, True, False),
    ("wonder", ["won"], "alias", None, False, False),
    ("They won the cup", ["won"], "alias", None, True, False),
    ("Parisian food", ["Paris"], "alias", None, False, False),
    ("Iranian", ["Iran"], "alias", None, False, False),
    ("Newfoundland", ["New"], "alias", None, False, False),
    ("Mount Everest", ["Everest"], "alias", None, True, False),
    ("Everest", ["Mount Everest"], "alias", None, False, False),
    ("Oxygen", ["O2", "Oxygen"], "alias", None, True, False),
    ("carbon", ["carbon dioxide"], "alias", None, False, False),
    # --- numbers inside alias answers
    ("It has eight legs", ["8"], "alias", None, True, False),
    ("It has 8 legs", ["eight"], "alias", None, True, False),
    ("In 1945.", ["1945"], "alias", None, True, False),
    ("In 1,945 BC", ["1945"], "alias", None, True, False),
    ("19450", ["1945"], "alias", None, False, False),
    ("About 299,792,458 metres per second", ["299792458"], "alias", None, True, False),
    ("twenty-one", ["21"], "alias", None, True, False),
    # --- empty and evasive
    ("", ["Paris"], "alias", None, False, False),
    ("   ", ["Paris"], "alias", None, False, False),
    ("I don't know", ["Paris"], "alias", None, False, False),
    ("Paris", [""], "alias", None, False, False),
    ("The", ["The"], "alias", None, False, False),
    # --- first sentence is the answer
    ("Carbon dioxide, mostly. Other gases such as nitrogen too.", ["Nitrogen"], "alias", None, False, False),
    ("Nitrogen. Carbon dioxide is second.", ["Nitrogen"], "alias", None, True, False),
    ("It is in St. Louis. Really.", ["St Louis"], "alias", None, True, False),
    ("Washington D.C. is the capital.", ["Washington"], "alias", None, True, False),
    ("Rome\nParis", ["Paris"], "alias", None, False, False),
    # --- echoes are not answers
    ("The capital of France is Paris.", ["Paris"], "alias", Q_FR, True, False),
    ("The capital of France", ["France"], "alias", Q_FR, False, True),
    ("France", ["France"], "alias", Q_FR, False, True),
    ("What is the capital of France?", ["capital of France", "Paris"], "alias", Q_FR, False, True),
    ("New York", ["New York City", "New York"], "alias", Q_NY, False, True),
    ("New York City", ["New York City", "New York"], "alias", Q_NY, True, False),
    ("Paris", ["Paris"], "alias", Q_FR, True, False),
    # --- choice questions keep their options
    ("Paul McCartney", ["Paul McCartney"], "alias", Q_CHOICE, True, False),
    ("It was Paul McCartney.", ["McCartney"], "alias", Q_CHOICE, True, False),
    ("John Lennon or Paul McCartney", ["Paul McCartney"], "alias", Q_CHOICE, False, True),
    ("Yesterday was written by John Lennon.", ["Paul McCartney"], "alias", Q_CHOICE, False, False),
    ("The Sun is bigger.", ["Sun"], "alias", "Which is bigger, the Sun or the Moon?", True, False),
    ("Cartesian plane", ["Cartesian plane"], "alias", "On the Cartesian plane, is the unit i or j?", False, True),
    # --- numbers for reasoning: the final number
    ("18", ["18"], "number", None, True, False),
    ("She makes 9 * 2 = 18 dollars.", ["18"], "number", None, True, False),
    ("18 eggs, so she makes 36", ["18"], "number", None, False, False),
    ("The answer is 3,400.", ["3400"], "number", None, True, False),
    ("The answer is 3400", ["3,400"], "number", None, True, False),
    ("twenty-one", ["21"], "number", None, True, False),
    ("one hundred and five", ["105"], "number", None, True, False),
    ("$18.00", ["18"], "number", None, True, False),
    ("2.5 hours", ["2.5"], "number", None, True, False),
    ("The answer is -5", ["-5"], "number", None, True, False),
    ("The answer is 5", ["-5"], "number", None, False, False),
    ("16 - 3 - 4 = 9", ["9"], "number", None, True, False),
    ("no idea", ["9"], "number", None, False, False),
    ("51.0", ["51"], "number", None, True, False),
    ("Janet has 16 eggs.", ["16"], "number", "Janet has 16 eggs. How many eggs does Janet have?", False, True),
    ("She has 16.", ["16"], "number", "Janet has 16 eggs. How many eggs does Janet have?", True, False),
    # --- yes/no
    ("Yes", ["yes"], "yesno", None, True, False),
    ("yes.", ["no"], "yesno", None, False, False),
    ("No, it cannot.", ["no"], "yesno", None, True, False),
    ("True", ["yes"], "yesno", None, True, False),
    ("Maybe", ["yes"], "yesno", None, False, False),
    ("Nobody knows, yes", ["yes"], "yesno", None, True, False),
]


@pytest.mark.parametrize("response,answers,kind,question,correct,echo", CASES)
def test_grade_table(response, answers, kind, question, correct, echo):
    g = grade(response, answers, kind, question)
    assert (g.correct, g.echo_discounted) == (correct, echo), g
    assert is_correct(response, answers, kind, question) is correct


def test_table_is_large_enough():
    assert len(CASES) >= 60


def test_normalize_and_numbers():
    assert normalize("  The Café, don't   3,400 people; 2.5 kg!") == "cafe dont 3400 people 2.5 kg"
    assert [v for v, _, _ in numbers("twenty-one and 3,400 and -7 and one hundred and five")] == [21, 3400, -7, 105]
    assert parse_number("1,945") == 1945 and parse_number("twenty-one") == 21 and parse_number("-3.5") == -3.5
    assert parse_number("12 apples") is None


def test_answer_span():
    assert answer_span("Paris. Then London.") == "Paris."
    assert answer_span("Mr. Smith did it. Yes.") == "Mr. Smith did it."
    assert answer_span("no sentence end") == "no sentence end"


def test_unknown_kind():
    with pytest.raises(ValueError):
        grade("x", ["x"], "essay")
