"""Talk to a trained model in the browser: a Gradio chat page on 127.0.0.1 that streams the reply.

    make chat                                        # the embedded SmolLM2-135M-Instruct
    make chat MODEL=runs/demo/grpo/adapter           # a LoRA adapter (its base is found from anywhere)
    make chat MODEL=runs/demo/sft/merged ARGS="--port 7861 --do_sample true"
    make chat MODEL=runs/demo/grpo/adapter ARGS="--ask 'Lan có 12 quả táo ...'"   # answer, print, exit (no page)
    python -m deploy.chat --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --backend hf

The page uses the model's own chat template and, as the system prompt, the one the model was
trained with (read from its run folder's config.yaml; `data.vi_gsm8k.SYSTEM_PROMPT` otherwise).
The prompt, sampling and length are editable on the page. Under every reply it shows the final
answer that `rewards.math.extract_answer` reads from it - the same checker the GRPO reward and
`make eval` use - and whether the reply has the `#### <số>` line the recipes train for.

Generation:
- CPU (and GPU without vLLM): transformers `generate` in a thread, streamed token by token
  through `TextIteratorStreamer`. Greedy by default, like `make eval`.
- GPU with the `vllm` extra and `--engine vllm` (or auto): the model is loaded with Unsloth's
  `fast_inference` and an adapter is served as a vLLM `LoRARequest`; vLLM's offline engine does not
  stream, so each reply appears whole. UNVERIFIED: written for a GPU machine, never run here.

The server listens on 127.0.0.1 only; it is a local tool, not a public service. `--share true`
asks Gradio for a temporary public *.gradio.live link instead (for a notebook on Colab or Kaggle,
where 127.0.0.1 is the notebook's machine, not yours): anyone with the link can use the model.
It is off unless asked for. `--ask QUESTION` (repeatable) answers without a page: the reply and
the extracted answer are printed, as a notebook cell or a script wants them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.cli import ArgumentParser, UserError
from rewards.math import extract_answer, format_number

DEFAULT_PORT = 7860


@dataclass
class Sampling:
    """Decoding settings a chat turn uses (the page's sliders)."""

    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int | None = None


def message_text(content: Any) -> str:
    """Plain text of a chat message's content as Gradio hands it over (a string, or a list of
    parts such as `{"type": "text", "text": ...}`)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return ""


def build_messages(system_prompt: str, history: list[dict[str, Any]], message: str) -> list[dict[str, str]]:
    """Chat messages for the template: the system prompt (none when empty), the earlier turns,
    then the new user message."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    for turn in history or []:
        role = turn.get("role")
        if role in ("user", "assistant"):
            messages.append({"role": role, "content": message_text(turn.get("content"))})
    messages.append({"role": "user", "content": message})
    return messages


def answer_summary(reply: str) -> str:
    """The final answer `rewards.math` reads from a reply, as one line for the page."""
    value = extract_answer(reply)
    if value is None:
        return "— (không có số nào trong câu trả lời / no number in the reply)"
    strict = extract_answer(reply, strict=True)
    if strict is not None:
        return f"{format_number(strict)}   (dòng #### đúng định dạng / strict format)"
    return f"{format_number(value)}   (không có dòng ####; đọc linh hoạt như make eval / flexible reading)"


def generation_config(model, tokenizer, sampling: Sampling):
    """Exactly the decoding the page shows: explicit values, nothing filled in from the model's
    generation_config (as in evaluate/generation.py), and the model's stop tokens."""
    from transformers import GenerationConfig

    from evaluate.generation import stop_token_ids

    return GenerationConfig(
        max_new_tokens=int(sampling.max_new_tokens),
        do_sample=bool(sampling.do_sample),
        temperature=float(sampling.temperature) if sampling.do_sample else 1.0,
        top_p=float(sampling.top_p) if sampling.do_sample else 1.0,
        top_k=0 if sampling.do_sample else 50,
        min_p=None,
        repetition_penalty=1.0,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )


def stream_hf(model, tokenizer, messages: list[dict[str, str]], sampling: Sampling) -> Iterator[str]:
    """Yield the growing reply while transformers generates it in a background thread.

    Closing the iterator (Gradio's stop button, a closed tab) stops the generation at the next
    token instead of letting it run to `max_new_tokens`.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    stop = threading.Event()

    class StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)  # the same question gets the same sampled reply
            with torch.no_grad():
                model.generate(**enc, generation_config=generation_config(model, tokenizer, sampling),
                               streamer=streamer, stopping_criteria=StoppingCriteriaList([StopWhenAsked()]))
        except BaseException as err:  # re-raised in the caller's thread below
            failure.append(err)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    reply = ""
    try:
        for piece in streamer:
            reply += piece
            yield reply
    finally:
        stop.set()
        worker.join()
    if failure:
        raise failure[0]


def reply_vllm(model, tokenizer, messages, sampling: Sampling, lora_path: str | None) -> str:
    """One whole reply through Unsloth's vLLM engine (UNVERIFIED: GPU only)."""
    from evaluate.generation import DecodingSettings, generate

    settings = DecodingSettings(max_new_tokens=int(sampling.max_new_tokens), batch_size=1,
                                do_sample=bool(sampling.do_sample), temperature=float(sampling.temperature),
                                top_p=float(sampling.top_p), seed=sampling.seed or 0)
    return generate(model, tokenizer, [messages], settings, lora_path=lora_path, progress=False).texts[0][0]


class ChatModel:
    """A loaded model plus how it generates; `respond` is the page's chat function."""

    def __init__(self, model, tokenizer, engine: str, lora_path: str | None = None, seed: int | None = None):
        self.model, self.tokenizer, self.engine, self.lora_path = model, tokenizer, engine, lora_path
        self.seed = seed
        self.lock = threading.Lock()  # one generation at a time: the model is not re-entrant

    def respond(self, message: str, history: list[dict[str, Any]], system_prompt: str, do_sample: bool,
                temperature: float, top_p: float, max_new_tokens: float) -> Iterator[tuple[str, str]]:
        messages = build_messages(system_prompt or "", history, message_text(message))
        sampling = Sampling(bool(do_sample), float(temperature), float(top_p), int(max_new_tokens), self.seed)
        reply = ""
        with self.lock:
            if self.engine == "vllm":
                reply = reply_vllm(self.model, self.tokenizer, messages, sampling, self.lora_path)
                yield reply, answer_summary(reply)
                return
            for reply in stream_hf(self.model, self.tokenizer, messages, sampling):
                yield reply, "…"
        yield reply, answer_summary(reply)


def ask(chat: ChatModel, questions: list[str], system_prompt: str, sampling: Sampling) -> list[str]:
    """Answer each question as a fresh one-turn chat, the way the page would, and print it."""
    replies = []
    for question in questions:
        reply, summary = "", ""
        for update in chat.respond(question, [], system_prompt, sampling.do_sample, sampling.temperature,
                                   sampling.top_p, sampling.max_new_tokens):
            reply, summary = update  # the last update is the whole reply and its extracted answer
        print(f"[chat] user: {question}\n[chat] assistant: {reply}\n[chat] extracted answer: {summary}", flush=True)
        replies.append(reply)
    return replies


def build_page(chat: ChatModel, header: str, system_prompt: str, sampling: Sampling):
    """The Gradio page: the chat on the left; system prompt, sampling and the extracted answer
    on the right."""
    import gradio as gr

    with gr.Blocks(title="vi-rl chat", fill_height=True) as page:
        gr.Markdown(header)
        with gr.Row(equal_height=False):
            chat_column = gr.Column(scale=3)
            with gr.Column(scale=2, min_width=280):
                answer = gr.Textbox(label="Đáp số trích xuất (rewards/math.py, như make eval)",
                                    interactive=False, elem_id="extracted-answer")
                system = gr.Textbox(value=system_prompt, lines=4, elem_id="system-prompt",
                                    label="System prompt (lời nhắc hệ thống; để trống = không gửi)")
                do_sample = gr.Checkbox(value=sampling.do_sample, label="Lấy mẫu (sampling); tắt = greedy như make eval")
                temperature = gr.Slider(0.05, 2.0, value=sampling.temperature, step=0.05, label="temperature")
                top_p = gr.Slider(0.05, 1.0, value=sampling.top_p, step=0.05, label="top_p")
                max_new_tokens = gr.Slider(8, 2048, value=sampling.max_new_tokens, step=8, label="max_new_tokens")
        with chat_column:
            gr.ChatInterface(
                chat.respond,
                # Plain text, not Markdown: a "#### 19" line must show as the model wrote it (Markdown
                # would turn it into a heading and hide the marker the reward looks for).
                chatbot=gr.Chatbot(render_markdown=False, height=520, elem_id="chatbot", label="Chat"),
                textbox=gr.Textbox(placeholder="Nhập câu hỏi... (Enter để gửi)", elem_id="chat-input",
                                   show_label=False, submit_btn=True, stop_btn=True),
                additional_inputs=[system, do_sample, temperature, top_p, max_new_tokens],
                additional_outputs=[answer],
                examples=[["Lan có 12 quả táo, Lan mua thêm 7 quả. Hỏi Lan có tất cả bao nhiêu quả táo?"],
                          ["Một quyển vở giá 8.500 đồng. Mẹ mua 4 quyển. Hỏi mẹ phải trả bao nhiêu tiền?"]],
                run_examples_on_click=True,
                cache_examples=False,
                fill_height=True,
            )
    return page


def load_chat_model(args: argparse.Namespace):
    """Load the model through the project's one loader (an adapter onto its base)."""
    from core.config import ModelArguments
    from core.models import load_model_and_tokenizer
    from core.precision import has_cuda
    from deploy.models import resolve_model

    source = resolve_model(args.model)
    engine = args.engine
    if engine == "auto":
        engine = "hf"
        if has_cuda():
            try:
                import vllm  # noqa: F401
                engine = "vllm"
            except ImportError:
                pass
    elif engine == "vllm" and not has_cuda():
        from core.cli import UserError

        raise UserError("--engine vllm needs a CUDA GPU; use --engine hf (or auto) on this machine")
    margs = ModelArguments(model_name_or_path=source.name, backend=args.backend, dtype=args.dtype,
                           load_in_4bit=args.load_in_4bit, use_peft=False, device=args.device,
                           fast_inference=engine == "vllm", trust_remote_code=args.trust_remote_code)
    model, tokenizer = load_model_and_tokenizer(margs, for_training=False)
    if engine == "vllm" and getattr(model, "vllm_engine", None) is None:
        print("[chat] vLLM was not available after loading: streaming with transformers instead")
        engine = "hf"
    if engine == "hf":
        model.eval()
    return source, ChatModel(model, tokenizer, engine, lora_path=source.name if source.is_adapter else None,
                             seed=args.seed)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", dest="model", default=None,
                        help="hub id, model directory, LoRA adapter directory or merged model (default: the embedded model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--share", type=_bool, default=False,
                        help="also serve a temporary public gradio.live link (anyone with it can use the model); default false")
    parser.add_argument("--ask", action="append", default=None, metavar="QUESTION",
                        help="answer QUESTION (repeatable), print the reply and the extracted answer, exit: no page")
    parser.add_argument("--system_prompt", default=None,
                        help="system prompt (default: the one the model's run trained with, else the vi_gsm8k one)")
    parser.add_argument("--do_sample", type=_bool, default=False, help="sample instead of greedy (default false)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=0.95)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=None,
                        help="seed every reply's sampling (the same question then gets the same reply); default: unseeded")
    parser.add_argument("--engine", choices=("auto", "hf", "vllm"), default="auto",
                        help="auto: vLLM on a GPU where it is installed, else transformers streaming")
    parser.add_argument("--backend", choices=("unsloth", "hf"), default="unsloth", help="model loader backend")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 where supported), bfloat16, float16 or float32")
    parser.add_argument("--load_in_4bit", type=_bool, default=False, help="load the weights in 4-bit (GPU)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--trust_remote_code", type=_bool, default=False)
    return parser.parse_args(argv)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    if not args.ask and importlib.util.find_spec("gradio") is None:
        # Checked before minutes of model loading. gradio is the `chat` extra (in `make install`'s dev):
        # it holds pillow below 13, which the vllm extra's vLLM refuses.
        raise UserError("the chat page needs gradio: pip install -e '.[chat]' (not in the same environment as the "
                        "vllm extra, whose vLLM needs pillow >= 13); ARGS=\"--ask '...'\" answers without a page")
    from data.vi_gsm8k import SYSTEM_PROMPT
    from deploy.models import recipe_system_prompt

    start = time.perf_counter()
    source, chat = load_chat_model(args)
    system_prompt = args.system_prompt if args.system_prompt is not None else recipe_system_prompt(source, SYSTEM_PROMPT)
    where = "GPU" if chat.model.device.type == "cuda" else "CPU"
    engine = "vLLM (whole replies)" if chat.engine == "vllm" else "transformers, streamed"
    header = (f"### vi-rl chat\n**Model:** `{source.describe()}`  \n"
              f"**Generation:** {engine} on {where}, {str(chat.model.dtype).replace('torch.', '')}")
    sampling = Sampling(args.do_sample, args.temperature, args.top_p, args.max_new_tokens)
    if args.ask:
        print(f"[chat] model ready in {time.perf_counter() - start:.1f} s ({source.describe()}, {engine} on {where})",
              flush=True)
        ask(chat, args.ask, system_prompt, sampling)
        return
    page = build_page(chat, header, system_prompt, sampling)
    print(f"[chat] model ready in {time.perf_counter() - start:.1f} s; open http://{args.host}:{args.port} "
          f"{'(and the public link Gradio prints) ' if args.share else ''}(Ctrl-C stops the server)", flush=True)
    import gradio as gr

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the page as cleanly as Ctrl-C does
    page.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=args.share, inbrowser=False, show_error=True,
        ssr_mode=False, quiet=True,
        # System fonts only: the default theme would fetch web fonts, which an offline machine cannot.
        theme=gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"]),
    )


if __name__ == "__main__":
    import core.boot  # noqa: F401  (Unsloth before transformers, as in every entry point)
    from core.cli import run_cli

    run_cli(main, sys.argv[1:])
