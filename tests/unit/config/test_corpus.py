"""The invalid-config corpus: each file in corpus/ names, in ``# expect:`` header lines, every
problem line validation must report for it — no more, no fewer."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsilo.config import ConfigError, parse_config

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.toml"))
EXPECT = "# expect: "


def expected_problems(path: Path) -> list[str]:
    return [
        line.removeprefix(EXPECT)
        for line in path.read_text().splitlines()
        if line.startswith(EXPECT)
    ]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_invalid_config_reports_exactly_its_problems(path: Path) -> None:
    expected = expected_problems(path)
    assert expected, f"{path.name} has no '# expect:' lines"
    with pytest.raises(ConfigError) as caught:
        parse_config(path.read_text(), source=Path(path.name))
    assert sorted(caught.value.problems) == sorted(expected)
    assert str(caught.value).splitlines() == caught.value.problems


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_every_problem_names_a_path_and_a_fix(path: Path) -> None:
    for line in expected_problems(path):
        location, _, message = line.partition(": ")
        assert location and " " not in location.strip('"'), line
        assert "; " in message, line
