"""The emotion schema: one order of codes, names and verbalisations used everywhere."""

import pytest

from llmser import schema


def test_codes_and_order():
    assert schema.CLASS_CODES == ("A", "S", "H", "U", "F", "D", "C", "N")
    assert schema.NUM_CLASSES == 8
    assert [schema.class_index(c) for c in schema.CLASS_CODES] == list(range(8))
    with pytest.raises(KeyError, match="valid codes"):
        schema.class_index("X")


@pytest.mark.parametrize(("raw", "code"), [("A", "A"), ("a", "A"), ("Angry", "A"), ("sadness", "S"),
                                           ("Other-Concerned", "O"), ("X", "X"), ("Surprise", "U"),
                                           ("Contempt", "C"), ("banana", None)])
def test_normalise_class(raw, code):
    assert schema.normalise_class(raw) == code


def test_verbalisations_cover_all_classes_uniquely():
    for verbalisation in schema.VERBALISATIONS.values():
        assert len(verbalisation.words) == 8
        for code in schema.CLASS_CODES:
            assert verbalisation.code_of(verbalisation.word(code)) == code
    with pytest.raises(ValueError, match="duplicate"):
        schema.Verbalisation("bad", ("a",) * 8)
