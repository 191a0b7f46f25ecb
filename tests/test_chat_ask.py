"""deploy/chat.py without a page: --ask answers and prints; --share stays off unless asked for;
the system prompt of a DPO run (a preset name in its config) reaches the chat as text."""

import pytest
import yaml

from data.preference import SYSTEM_PROMPT_VI
from deploy.chat import Sampling, ask, parse
from deploy.models import recipe_system_prompt, resolve_model


class FakeChat:
    """`ChatModel.respond`'s contract: a stream of (reply so far, answer line), the last one whole."""

    def __init__(self):
        self.calls = []

    def respond(self, message, history, system_prompt, do_sample, temperature, top_p, max_new_tokens):
        self.calls.append((message, history, system_prompt, max_new_tokens))
        yield "12 + 7", "…"
        yield "12 + 7 = 19\n#### 19", "19   (strict)"


def test_ask_prints_each_whole_reply_and_its_answer(capsys):
    chat = FakeChat()
    replies = ask(chat, ["Lan có 12 quả táo, mua thêm 7 quả?", "Hai?"], "Giải toán.", Sampling(max_new_tokens=32))
    assert replies == ["12 + 7 = 19\n#### 19"] * 2
    assert chat.calls[0] == ("Lan có 12 quả táo, mua thêm 7 quả?", [], "Giải toán.", 32)  # a fresh chat each time
    out = capsys.readouterr().out
    assert out.count("[chat] assistant: 12 + 7 = 19\n#### 19") == 2 and "[chat] extracted answer: 19   (strict)" in out


@pytest.mark.parametrize("argv,share,asked", [
    ([], False, None),
    (["--share", "true", "--ask", "a", "--ask", "b"], True, ["a", "b"]),
])
def test_share_is_off_unless_asked_and_ask_repeats(argv, share, asked):
    args = parse(argv)
    assert args.share is share and args.ask == asked


@pytest.mark.parametrize("configured,expected", [
    ("vi", SYSTEM_PROMPT_VI),          # a DPO preset name
    ("en", "You are a helpful assistant."),
    ("none", ""),
    ("", ""),                          # trained without a system message
    ("Giải toán.", "Giải toán."),     # the text itself
])
def test_the_chat_gets_the_system_prompt_text_a_run_trained_with(tmp_path, configured, expected):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text('{"base_model_name_or_path": "base"}')
    (run / "config.yaml").write_text(yaml.safe_dump({"system_prompt": configured}))
    (run / "run_info.json").write_text("{}")
    assert recipe_system_prompt(resolve_model(str(run / "adapter")), "fallback") == expected
