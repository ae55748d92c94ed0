"""Character-level GPT on tiny Shakespeare: the nanoGPT CPU recipe.

    python -m lm.train --config configs/shakespeare_char.py --workdir runs/shakespeare_char

4 layers, 4 heads, width 128, context 64, batch 12, 2000 steps, lr 1e-3 (100 warmup steps, cosine to 1e-4),
AdamW beta2 0.99, no dropout, the first 90% of the characters for training and the last 10% for validation.
Measured on a 2-core CPU: final validation loss MEASURED_LOSS, in MEASURED_TIME.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 1337
    c.data = dict(path="", separator="\n\n", validation_fraction=0.1, cache_dir="")
    c.tokenizer = dict(type="char", vocab_size=256)
    c.model = dict(num_layers=4, num_heads=4, embed_dim=128, mlp_dim=0, max_len=64, use_bias=True,
                   dtype="float32", param_dtype="float32")
    c.train = dict(batch_size=12, steps=2000, log_every=100, eval_every=500, eval_batches=0)
    c.optim = dict(lr=1e-3, min_lr=1e-4, warmup_steps=100, b1=0.9, b2=0.99, weight_decay=0.1, grad_clip=1.0)
    c.checkpoint = dict(every=250, keep=3)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    return ml_collections.ConfigDict(c)
