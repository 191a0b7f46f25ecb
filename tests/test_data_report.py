"""data.report (`make data-report`): near-duplicate search, contamination, lengths, the report files."""

import json

import pytest

from data import report
from data.report import contamination, jaccard, load_part, main, nearest, shingles, words
from tests.conftest import ROOT, run_entry

FIXTURES = ROOT / "data" / "fixtures"
TRAIN, TEST = FIXTURES / "bai_toan.csv", FIXTURES / "bai_toan_kiem_tra.csv"
COLUMNS = "question=cau_hoi,explanation=loi_giai,answer=dap_an"

CORPUS = [
    "Bác Hai nuôi 35 con gà và 18 con vịt. Hỏi bác Hai nuôi tất cả bao nhiêu con?",
    "Một cửa hàng có 120 kg gạo, buổi sáng bán được 45 kg. Hỏi cửa hàng còn lại bao nhiêu ki-lô-gam gạo?",
    "Cô giáo chia đều 96 quyển vở cho 8 tổ. Hỏi mỗi tổ nhận được bao nhiêu quyển vở?",
    "Trường có 6 lớp, mỗi lớp có 35 học sinh. Hỏi trường có tất cả bao nhiêu học sinh?",
]


def test_words_mask_numbers_and_normalize():
    assert words("Mẹ mua 2,5 KG thịt giá 120.000 đồng") == ["mẹ", "mua", "<số>", "kg", "thịt", "giá", "<số>", "đồng"]
    assert shingles("một hai") == frozenset([("một", "hai")])  # shorter than n: the words themselves
    assert jaccard(frozenset(), frozenset()) == 0.0


@pytest.mark.parametrize("query, expected_index, near", [
    # planted: the same problem with other numbers and one word added ("đã") - found
    ("Một cửa hàng có 200 kg gạo, buổi sáng đã bán được 60 kg. Hỏi cửa hàng còn lại bao nhiêu ki-lô-gam gạo?", 1, True),
    # case, spacing and punctuation changes only - found, similarity 1
    ("cô giáo  chia đều 96 quyển vở cho 8 tổ; hỏi mỗi tổ nhận được bao nhiêu quyển vở", 2, True),
    # a different problem that shares the question's frame - not a near-duplicate
    ("Một thư viện có 1.500 quyển sách, trong đó 3/5 là sách giáo khoa. Hỏi có bao nhiêu quyển sách giáo khoa?", None,
     False),
])
def test_nearest_finds_planted_near_duplicates_only(query, expected_index, near):
    (index, score), = nearest([query], CORPUS)
    assert (score >= report.NEAR_THRESHOLD) == near, score
    if near:
        assert index == expected_index
    # the sparse computation agrees with the plain definition
    assert score == pytest.approx(max(jaccard(shingles(query), shingles(c)) for c in CORPUS))


def test_contamination_on_the_readme_fixtures_finds_the_planted_copy():
    train = load_part("math", "train", str(TRAIN), "train", COLUMNS, None, "skip", None)
    test = load_part("math", "test", str(TEST), "test", COLUMNS, None, "skip", None)
    assert train.n_read == 28 and len(train.rows) == 27 and train.skipped == ["line 29: answer 'năm' is not a number"]
    exact, near = contamination(train, test, report.NEAR_THRESHOLD)
    assert exact == []
    assert [(test.rows[i].where, train.rows[j].where) for i, j, _ in near] == [("line 5", "line 23")]
    # An exact copy (up to case and spaces) is reported as exact, not also as near.
    test.keys[0] = "  " + train.keys[3].upper()
    exact, near = contamination(train, test, report.NEAR_THRESHOLD)
    assert [(test.rows[i].where, train.rows[j].where) for i, j in exact] == [("line 2", train.rows[3].where)]
    assert [i for i, _, _ in near] == [2]


def test_report_files_and_refusal_to_overwrite(tiny_models, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["--source", str(TRAIN), "--test", str(TEST), "--columns", COLUMNS, "--model_name_or_path", str(tiny_models / "qwen2"),
            "--out", str(out), "--bad_rows_out", str(tmp_path / "bad.jsonl")]
    assert main(args) == 0
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "| train | `" in text and "| 28 | 27 | 1 |" in text and "- line 29: answer 'năm' is not a number" in text
    assert "| train | prompt + target |" in text and "SFT: `max_length: " in text and "GRPO: `max_completion_length: " in text
    assert "| line 5 | line 23 | 0.80 |" in text and "near-duplicates: 1 more" in text
    assert (out / "lengths.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "bad.jsonl").read_text(encoding="utf-8"))["where"] == "line 29"
    # The numbers are data.lengths' own: the longest prompt + target row is where the report says.
    from transformers import AutoTokenizer

    from data.lengths import sequence_lengths, summarize
    from data.vi_gsm8k import SYSTEM_PROMPT
    part = load_part("math", "train", str(TRAIN), "train", COLUMNS, SYSTEM_PROMPT, "skip", None)
    full = summarize(sequence_lengths(part.dataset, AutoTokenizer.from_pretrained(tiny_models / "qwen2"),
                                      ["prompt", "completion"]))
    assert f"| train | prompt + target | {full.p50} | {full.p90} | {full.p99} | {full.longest} | " \
           f"{part.rows[full.longest_row].where} |" in text
    capsys.readouterr()
    before = (out / "report.md").read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists; not overwriting it" in err[0]
    assert (out / "report.md").read_bytes() == before


def test_preference_and_feedback_reports_without_a_model(tmp_path):
    assert main(["--kind", "preference", "--source", str(FIXTURES / "preference_sample.jsonl"),
                 "--out", str(tmp_path / "p")]) == 0
    text = (tmp_path / "p" / "report.md").read_text(encoding="utf-8")
    assert "| 48 | 48 | 0 |" in text and "Not measured: pass `--model`" in text
    assert main(["--kind", "feedback", "--source", str(FIXTURES / "students_feedback_sample.jsonl"),
                 "--out", str(tmp_path / "f")]) == 0
    assert "## Duplicates" in (tmp_path / "f" / "report.md").read_text(encoding="utf-8")


def test_make_target_resolves_the_embedded_model_and_passes_the_options():
    proc = run_entry(["make", "-n", "data-report", f"SOURCE={TRAIN}", f"TEST={TEST}", f"COLUMNS={COLUMNS}",
                      "MODEL=embedded", "EMBEDDED=/models/smol"])
    assert (f"-m data.report --source '{TRAIN}' --kind math --out 'runs/data-report' --test '{TEST}' "
            f"--columns '{COLUMNS}' --model_name_or_path '/models/smol'") in proc.stdout
    # Without MODEL, core.embedded never runs.
    proc = run_entry(["make", "-n", "data-report", f"SOURCE={TRAIN}", "PY=/nonexistent/python"])
    assert "--model_name_or_path" not in proc.stdout and "nonexistent/python -m data.report" in proc.stdout


def test_a_bad_source_is_one_line_and_exit_2(tmp_path):
    proc = run_entry(["python", "-m", "data.report", "--source", str(TRAIN), "--columns", "cau=cau_hoi",
                      "--out", str(tmp_path / "r")], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: unknown field(s) in columns: cau; math rows use the fields question, explanation, answer, prompt, "
        "completion, messages"]
    assert not (tmp_path / "r").exists()
