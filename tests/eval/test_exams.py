"""C-Eval and CMMLU through lm-evaluation-harness on the tiny local CSV sets."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from tests.eval.eval_fixtures import CEVAL_DIR, EVAL_LLAMA, EXAM_DIR
from tests.fixtures.tiny_llama import scripted_llama
from zhllama.errors import UserError
from zhllama.eval.exams import CEVAL, CMMLU, check_exam_csv, read_exam_dir
from zhllama.eval.harness import TaskDefinitions, run_exam


@pytest.fixture(scope="module")
def definitions() -> TaskDefinitions:
    return TaskDefinitions()


def answers_in_csv(path: Path) -> list[str]:
    """The answer column read straight from the fixture file (CMMLU's Answer or C-Eval's answer)."""
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    return [row.get("Answer") or row["answer"] for row in rows]


def test_reads_the_cmmlu_and_ceval_layouts(definitions: TaskDefinitions) -> None:
    cmmlu = read_exam_dir(EXAM_DIR, definitions.names)
    assert [(s.benchmark, s.task) for s in cmmlu] == [(CMMLU, "cmmlu_agronomy"), (CMMLU, "cmmlu_chinese_history")]
    assert [s.questions for s in cmmlu] == [len(answers_in_csv(s.scored)) for s in cmmlu] == [6, 6]
    ceval = read_exam_dir(CEVAL_DIR, definitions.names)
    assert [(s.benchmark, s.task, s.questions) for s in ceval] == [(CEVAL, "ceval-valid_high_school_biology", 3)]
    assert ceval[0].dev.name == "high_school_biology_dev.csv"


@pytest.mark.parametrize("letter", ["C", "A"])
def test_the_harness_scores_every_question_of_both_benchmarks(
    chars: PreTrainedTokenizerFast, definitions: TaskDefinitions, letter: str, tmp_path: Path
) -> None:
    # The scripted model prefers `letter` over the other letters and a non-letter piece over everything: the
    # harness compares the four choices' log-likelihoods only, so it predicts `letter` for every question.
    others = [other for other in "ABCD" if other != letter]
    model = scripted_llama(chars, {"的": 10.0, letter: 3.0, others[0]: 2.0, others[1]: 1.0, others[2]: 0.5},
                           **EVAL_LLAMA)
    subjects = read_exam_dir(EXAM_DIR, definitions.names) + read_exam_dir(CEVAL_DIR, definitions.names)
    for shots in (0, 5):
        run = run_exam(model, chars, subjects, shots, definitions, tmp_path / f"{shots}", batch_size=4)
        assert run.shots == shots
        for subject, score in zip(subjects, run.subjects, strict=True):
            answers = answers_in_csv(subject.scored)
            assert (score.task, score.total) == (subject.task, len(answers))
            assert score.accuracy == pytest.approx(answers.count(letter) / len(answers))
            questions = [q for q in run.questions if q["task"] == subject.task]
            assert [q["answer"] for q in questions] == answers
            assert {q["prediction"] for q in questions} == {letter}
            for question in questions:
                assert len(question["loglikelihoods"]) == 4 and question["shots"] == shots
                # the scripted logits order the letters; each choice also pays the same delimiter token
                chosen = question["loglikelihoods"]["ABCD".index(letter)]
                assert chosen == max(question["loglikelihoods"])
                assert question["correct"] == (question["answer"] == letter)
        print(f"prefers {letter}, {shots}-shot: {[s.accuracy for s in run.subjects]}")


def test_a_wrong_header_names_the_file_and_the_header_it_needs(tmp_path: Path) -> None:
    bad = tmp_path / "agronomy.csv"
    bad.write_text("id,question,A,B,C,D,answer\n0,问题,甲,乙,丙,丁,A\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        check_exam_csv(bad, CMMLU)
    message = str(error.value)
    assert "\n" not in message
    assert f"{bad}:1: header id,question,A,B,C,D,answer lacks Question, Answer" in message
    assert "CMMLU CSVs need the header ,Question,A,B,C,D,Answer" in message


def test_bad_answer_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,A,B,C,D,Answer\n问题,甲,乙,丙,丁,A\n问题,甲,乙,丙,丁,E\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.csv:3: Answer 'E' is not one of A, B, C, D"):
        check_exam_csv(bad, CMMLU)


def test_a_subject_the_harness_does_not_have_is_named(tmp_path: Path, definitions: TaskDefinitions) -> None:
    for split in ("dev", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "astrology.csv").write_text(",Question,A,B,C,D,Answer\n0,问,甲,乙,丙,丁,A\n",
                                                         encoding="utf-8")
    with pytest.raises(UserError, match=r"astrology\.csv: lm-eval has no task cmmlu_astrology"):
        read_exam_dir(tmp_path, definitions.names)
