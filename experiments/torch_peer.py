"""The PyTorch peer for `lm.bench`: an eager GPT-2 train step (Hugging Face GPT2LMHeadModel + AdamW) timed on
the same shapes, so that ratios are measured side by side on one machine.

    python experiments/torch_peer.py          # needs torch and transformers (not dependencies of lm)
    python -m lm.bench --config configs/shakespeare_char.py
    python -m lm.bench --config configs/gpt2_124m.py --config.model.dtype=float32 --config.train.batch_size=4 \
        --config.model.max_len=256
"""

import time

import torch
import transformers

SHAPES = {  # name: (layers, heads, width, context, vocab, batch)
    "shakespeare_char recipe": (4, 4, 128, 64, 68, 12),
    "gpt2_124m, batch 4 x 256": (12, 12, 768, 256, 50257, 4),
}


def tokens_per_second(layers: int, heads: int, width: int, context: int, vocab: int, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_embd=width, n_layer=layers,
                                     n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)
    x = torch.randint(0, vocab, (batch, context))

    def step() -> None:
        loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * context * steps / (time.perf_counter() - start)


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, shape in SHAPES.items():
        print(f"{name}: {tokens_per_second(*shape, steps=20 if shape[2] < 512 else 3):,.0f} tokens/s (PyTorch eager)")
