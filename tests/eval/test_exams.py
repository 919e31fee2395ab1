from __future__ import annotations

import csv
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from tests.eval.eval_fixtures import EVAL_LLAMA, EXAM_DIR
from tests.fixtures.tiny_llama import scripted_llama
from zhllama.errors import UserError
from zhllama.eval.exams import exam_prompt, read_exam_csv, read_exam_dir, score_subject
from zhllama.eval.scoring import score_choices


def answers_in_csv(path: Path) -> list[str]:
    """The Answer column read straight from the fixture file (whatever its case or index column)."""
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    return [row.get("Answer") or row["answer"] for row in rows]


def test_reads_cmmlu_and_ceval_headers() -> None:
    subjects = {subject.name: subject for subject in read_exam_dir(EXAM_DIR)}
    assert sorted(subjects) == ["agronomy", "chinese_history"]
    # CMMLU layout: leading unnamed index column; C-Eval layout: id + lower-case question/answer
    history, agronomy = subjects["chinese_history"], subjects["agronomy"]
    assert (history.title, agronomy.title) == ("中国历史", "农学")
    assert [q.answer for q in history.test] == answers_in_csv(EXAM_DIR / "test" / "chinese_history.csv")
    assert [q.answer for q in agronomy.dev] == answers_in_csv(EXAM_DIR / "dev" / "agronomy.csv")
    assert history.test[0].options == ("夏朝", "商朝", "秦朝", "周朝")
    assert len(history.dev) == len(agronomy.dev) == 5


def test_five_shot_prompt_layout() -> None:
    history = next(s for s in read_exam_dir(EXAM_DIR) if s.name == "chinese_history")
    prompt = exam_prompt(history.title, history.dev[:5], history.test[0], instruction_model=False)
    print(prompt)
    assert prompt.startswith("以下是中国关于中国历史考试的单项选择题，请选出其中的正确答案。\n\n秦朝统一六国")
    assert prompt.count("\n答案：") == 6 and prompt.endswith("A. 夏朝\nB. 商朝\nC. 秦朝\nD. 周朝\n答案：")
    for example in history.dev:
        assert f"D. {example.options[3]}\n答案：{example.answer}\n\n" in prompt
    alpaca = exam_prompt(history.title, history.dev[:5], history.test[0], instruction_model=True)
    assert alpaca.startswith("Below is an instruction") and alpaca.endswith("答案是什么？\n\n### Response:\n")


@pytest.mark.parametrize("letter", ["C", "A"])
@pytest.mark.parametrize("instruction_model", [False, True])
def test_accuracy_is_the_share_of_the_preferred_letter(
    chars: PreTrainedTokenizerFast, letter: str, instruction_model: bool
) -> None:
    # The scripted model prefers `letter` over the other letters, and a non-letter piece over everything:
    # scoring must restrict the argmax to A/B/C/D.
    others = [other for other in "ABCD" if other != letter]
    logits = {"的": 10.0, letter: 3.0, others[0]: 2.0, others[1]: 1.0, others[2]: 0.5}
    model = scripted_llama(chars, logits, **EVAL_LLAMA)
    subjects = read_exam_dir(EXAM_DIR)
    for shots in (0, 5):
        accuracies = []
        for subject in subjects:
            score = score_subject(model, chars, subject, shots, instruction_model)
            answers = answers_in_csv(EXAM_DIR / "test" / f"{subject.name}.csv")
            assert score.accuracy == pytest.approx(answers.count(letter) / len(answers))
            assert (score.total, score.shots_used) == (len(answers), shots)
            accuracies.append(score.accuracy)
        print(f"prefers {letter}, {shots}-shot, alpaca={instruction_model}: {accuracies}")


def test_score_choices_multi_token_matches_next_token(chars: PreTrainedTokenizerFast) -> None:
    model = scripted_llama(chars, {"秦": 2.0, "朝": 1.0, "汉": 0.5}, **EVAL_LLAMA)
    # single-token choices: next-token log-probabilities; two-token choices: the sum over both tokens
    single = score_choices(model, chars, "答案：", ["秦", "汉"])
    double = score_choices(model, chars, "答案：", ["秦朝", "汉朝"])
    assert single[0] > single[1]
    assert double[0] == pytest.approx(single[0] + score_choices(model, chars, "答案：秦", ["朝"])[0], abs=1e-5)
    assert double[1] == pytest.approx(single[1] + score_choices(model, chars, "答案：汉", ["朝"])[0], abs=1e-5)
    assert double[0] - double[1] == pytest.approx(1.5, abs=1e-5)  # the scripted logits 2.0 - 0.5


def test_missing_column_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(",Question,A,B,C,D\n0,问题,甲,乙,丙,丁\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        read_exam_csv(bad)
    message = str(error.value)
    assert "\n" not in message
    assert str(bad) in message and "missing column Answer" in message and "header found: ,Question,A,B,C,D" in message


def test_bad_answer_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,A,B,C,D,Answer\n问题,甲,乙,丙,丁,A\n问题,甲,乙,丙,丁,E\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.csv:3: Answer 'E' is not one of A, B, C, D"):
        read_exam_csv(bad)
