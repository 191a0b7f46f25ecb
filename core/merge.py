"""Merging a LoRA adapter into its 16-bit base model, checked before it is kept.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from core.adapters import adapter_base, is_prequantized
from core.cli import UserError
from core.files import write_json_atomic as write_json

# Fixed probes for the merge check: Vietnamese as the toolkit's users write it.
MERGE_PROBES = (
    "Lan có 25 quả táo. Lan cho em gái 8 quả. Hỏi Lan còn lại bao nhiêu quả táo?",
    "Một cửa hàng bán 1.250.000 đồng tiền vải mỗi ngày. Sau 3 ngày cửa hàng thu được bao nhiêu tiền?",
    "Giảng viên dạy rất nhiệt tình và dễ hiểu.",
)


def merge_adapter(adapter_dir: str, out_dir: str, dtype: str = "bfloat16", trust_remote_code: bool = False) -> dict:
    """Merge a LoRA adapter into its 16-bit base model, check it, and save it in `dtype`.

    The merge is done in float32 on the CPU, onto the unquantized base - never into 4-bit weights
    (the NF4 rounding would stay in the "16-bit" model; Unsloth's own `merged_16bit` save of a
    4-bit FastLanguageModel dequantizes the NF4 weights, so it carries that rounding too). Checks:
    the merged model's logits on fixed Vietnamese probes match the base + adapter model's (float32),
    and the saved tensors equal the merged ones cast to `dtype`. Writes `merge.json` with both
    results. Needs the base in CPU RAM at 4 bytes per parameter. Returns the check's numbers.
    """
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = adapter_base(adapter_dir)
    if base is None:
        raise UserError(f"{adapter_dir} is not a LoRA adapter directory (no adapter_config.json)")
    if is_prequantized(base):
        raise UserError(
            f"{adapter_dir} names the quantized checkpoint {base} as its base; merging into it keeps the "
            "4-bit rounding. Set base_model_name_or_path in its adapter_config.json to the 16-bit model"
        )
    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise UserError(f"{out_dir} already exists; not overwriting a merged model")
    save_dtype = getattr(torch, dtype)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, adapter_dir).eval()

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
             if tokenizer.chat_template else t for t in MERGE_PROBES]
    probe = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=tokenizer.chat_template is None)
    with torch.no_grad():
        expected = model(**probe).logits.float()
        merged = model.merge_and_unload()
        got = merged(**probe).logits.float()
    mask = probe["attention_mask"].bool()
    diff = (got - expected).abs()[mask].max().item()
    agreement = (got.argmax(-1) == expected.argmax(-1))[mask].float().mean().item()
    scale = max(1.0, expected[mask].abs().max().item())
    if diff > 1e-3 * scale or agreement < 1.0:
        raise RuntimeError(f"merge check failed: merged logits differ from base + adapter by up to {diff:.3g} "
                           f"(next-token agreement {agreement:.1%}); the merged model was not saved")

    merged.to(save_dtype)
    merged.config.pad_token_id = tokenizer.pad_token_id
    tmp = Path(out_dir).with_name(Path(out_dir).name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    merged.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    state = merged.state_dict()
    compared = 0
    for shard in sorted(tmp.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():
                if not torch.equal(fh.get_tensor(key), state[key]):
                    raise RuntimeError(f"merge check failed: saved tensor {key} differs from the merged model")
                compared += 1
    report = {"base": base, "adapter": str(adapter_dir), "dtype": dtype, "probe_positions": int(mask.sum()),
              "max_abs_logit_diff_fp32": diff, "next_token_agreement": agreement, "saved_tensors_checked": compared,
              "seconds": round(time.time() - t0, 1)}
    write_json(tmp / "merge.json", report)
    os.replace(tmp, out_dir)
    print(f"[run] merged {dtype} model saved to {out_dir}: matches base + adapter on {report['probe_positions']} "
          f"probe positions (max |logit diff| {diff:.2g} in float32); {compared} saved tensors checked")
    return report
