"""The weight formats `lm.sample --quantize` (and `lm.bench --decode_formats`) name, which lm/sample/weights.py
converts to; a module of their own so that the command's flags know them before JAX is imported."""

# none: as saved (float32 unless param_dtype says otherwise); int8: weight-only, a scale per output channel;
# int8_dynamic: int8 weights and per-token int8 activations.
WEIGHT_FORMATS = ("none", "bfloat16", "int8", "int8_dynamic")
