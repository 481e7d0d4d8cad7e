"""The contrast choice as the status line states it."""

from napari_microml.runtime.contrast import ContrastChoice


def test_the_status_phrase_says_what_was_chosen_without_a_bare_statistic():
    sure = ContrastChoice("dark", "auto", -0.78)
    assert sure.note() == "dark columns (detected)"
    assert sure.record() == {"requested": "auto", "used": "dark", "skew": -0.78}
    unsure = ContrastChoice("bright", "auto", 0.05).note()
    assert "uncertain" in unsure and "Columns are" in unsure and "0.05" not in unsure
    assert ContrastChoice("bright", "bright").note() == "bright columns"
