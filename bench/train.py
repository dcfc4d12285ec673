"""Training speed: `modelport train` against a bare transformers `Trainer` on the same model, data and settings.

Both run in their own fresh process, the same number of optimizer steps, alternately (`--repeat` rounds, best of
each kept: the machine is shared and noisy). The bare side is what a user writes with transformers and peft alone:
the text tokenized and cut into `--seq-len` blocks (the same blocks `modelport train` makes of a .txt), LoRA on
the same targets, the same `TrainingArguments` (fp32, linear schedule, no checkpoints, the same logging steps).
Tokens/s counts the training loop only (`trainer.train()`, timed inside each process), so model loading and
imports do not dilute the difference; peak RSS is the kernel's (wait4's ru_maxrss) for the whole process.
Target: `modelport train` within 5 % of the bare Trainer.

Model: SmolLM2-135M-Instruct, the HF folder `modelport convert` makes of its GGUF (bench/out, made once).

    .venv/bin/python bench/train.py [--model DIR] [--method lora|full] [--steps 20] [--seq-len 64] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelport.samples import smollm2_gguf  # noqa: E402
from run_memory import OUT, hf_folder  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
PARAGRAPH = ("The river runs past the old mill, where the miller's daughter counts sacks of grain each morning. "
             "In winter the wheel freezes and the village waits for spring; in summer children swim below the weir. ")

BARE = textwrap.dedent('''
    import json, sys, time
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed
    a = json.loads(sys.argv[1])
    tok = AutoTokenizer.from_pretrained(a["model"])
    ids = tok(open(a["data"]).read())["input_ids"] + [tok.eos_token_id]
    L = a["seq_len"]
    blocks = [ids[i:i + L] for i in range(0, len(ids) - L + 1, L)]
    if len(ids) - len(blocks) * L >= 2:
        blocks.append(ids[len(blocks) * L:])
    data = [{"input_ids": b, "labels": list(b)} for b in blocks]

    def collate(batch):
        w = max(len(b["input_ids"]) for b in batch)
        pad = lambda key, fill: torch.tensor([b[key] + [fill] * (w - len(b[key])) for b in batch])
        mask = torch.tensor([[1] * len(b["input_ids"]) + [0] * (w - len(b["input_ids"])) for b in batch])
        return {"input_ids": pad("input_ids", tok.pad_token_id or 0), "labels": pad("labels", -100), "attention_mask": mask}

    set_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
    if a["method"] == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=a["targets"],
                                                 bias="none", task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=a["out"], max_steps=a["steps"], learning_rate=a["lr"],
                             per_device_train_batch_size=a["batch"], lr_scheduler_type="linear", weight_decay=0.0,
                             seed=0, data_seed=0, bf16=False, use_cpu=True, logging_steps=a["logging_steps"],
                             save_strategy="no", report_to=[], disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate)
    t0 = time.perf_counter()
    trainer.train()
    print(json.dumps({"seconds": time.perf_counter() - t0}))
''')


def run(argv: list[str]) -> tuple[str, int, float]:
    """stdout, peak RSS bytes and wall seconds of a child process."""
    import time

    env = {**os.environ, "PYTHONPATH": SRC, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{argv[:4]} failed: {err.read()[-2000:]}")
        return out.read(), usage.ru_maxrss * 1024, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="HF folder (default: SmolLM2-135M from its GGUF)")
    ap.add_argument("--method", choices=("lora", "full"), default="lora")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--logging-steps", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    model = a.model or hf_folder(smollm2_gguf())
    OUT.mkdir(exist_ok=True)
    data = OUT / "train-corpus.txt"
    data.write_text(PARAGRAPH * 200)
    lr = 2e-4 if a.method == "lora" else 2e-5
    plan_argv = [sys.executable, "-m", "modelport", "train", str(model), str(data), "--method", a.method, "--out",
                 str(OUT / "train-plan"), "--seq-len", str(a.seq_len), "--batch", str(a.batch), "--dry-run", "--json"]
    plan = json.loads(run(plan_argv)[0])
    tokens = a.steps * a.batch * a.seq_len
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        for _ in range(a.repeat):
            mp_out = Path(scratch) / "modelport"
            text, peak, wall = run([sys.executable, "-m", "modelport", "train", str(model), str(data), "--method",
                                    a.method, "--out", str(mp_out), "--force", "--max-steps", str(a.steps),
                                    "--seq-len", str(a.seq_len), "--batch", str(a.batch), "--lr", str(lr), "--fp32",
                                    "--save-steps", "0", "--logging-steps", str(a.logging_steps), "--seed", "0",
                                    "--json"])
            runs = {"modelport train": (json.loads(text)["seconds"], peak, wall)}
            args = {"model": str(model), "data": str(data), "seq_len": a.seq_len, "batch": a.batch, "steps": a.steps,
                    "lr": lr, "method": a.method, "targets": plan["lora_targets"], "logging_steps": a.logging_steps,
                    "out": str(Path(scratch) / "bare")}
            text, peak, wall = run([sys.executable, "-c", BARE, json.dumps(args)])
            runs["bare Trainer"] = (json.loads(text.strip().splitlines()[-1])["seconds"], peak, wall)
            for name, (seconds, peak, wall) in runs.items():
                print(f"  {name}: {tokens / seconds:.1f} tokens/s, peak {peak / 1e6:.0f} MB", flush=True)
                if name not in best or seconds < best[name]["seconds"]:
                    best[name] = {"seconds": seconds, "tokens_per_s": tokens / seconds, "peak": peak, "wall": wall}
    print(f"\n{a.method} on {model.name}: {a.steps} steps x batch {a.batch} x seq {a.seq_len} ({tokens:,} tokens), "
          f"fp32, best of {a.repeat}")
    print(f"{'':<18}{'train s':>9}{'tokens/s':>10}{'process s':>11}{'peak RSS MB':>13}")
    for name, r in best.items():
        print(f"{name:<18}{r['seconds']:>9.2f}{r['tokens_per_s']:>10.1f}{r['wall']:>11.1f}{r['peak'] / 1e6:>13.0f}")
    ratio = best["modelport train"]["tokens_per_s"] / best["bare Trainer"]["tokens_per_s"]
    print(f"modelport / bare tokens/s: {ratio:.3f} (overhead {100 * (1 - ratio):+.1f} %, target under 5 %); "
          f"estimate (--dry-run): {plan['memory']['total'] / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
