import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from beholder_plugin import BeholderHFCallback

logdir = sys.argv[1] if len(sys.argv) > 1 else "logs/gpt2"

config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                    bos_token_id=0, eos_token_id=0)
model = GPT2LMHeadModel(config)  # random weights: nothing is downloaded
tokens = torch.randint(0, 100, (64, 16))
dataset = [{"input_ids": t, "labels": t} for t in tokens]

args = TrainingArguments(output_dir=f"{logdir}/checkpoints", max_steps=20, per_device_train_batch_size=8,
                         report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=dataset,
                  callbacks=[BeholderHFCallback(logdir)])
trainer.train()
