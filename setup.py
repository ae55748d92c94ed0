"""Installs `lm`: JAX/Flax causal-language-model pretraining."""

from setuptools import find_packages, setup

setup(
    name="lm",
    version="0.1.0",
    description="JAX/Flax pretraining of decoder-only Transformers, from a laptop CPU to a device mesh.",
    packages=find_packages(include=["lm", "lm.*"]),
    package_data={"lm.data": ["*.txt", "*.jsonl"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.8",  # contrib.muon with declared matrix views
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.7",
        "array_record>=0.7",
        "importlib_resources>=6.0",  # tensorflow-datasets needs it when building, but does not declare it
        "grain>=0.2.10",
        "pyarrow>=14",  # Parquet corpora
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "tokenizers>=0.20",  # Hugging Face tokenizer.json files of imported models
        "ml_collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "ml_dtypes<0.7",  # JAX's dtypes: 0.7.0 takes about a second to import, which every command would pay
        "scipy>=1.10",  # Welch's t-test across seeds (lm.sweep)
        "matplotlib>=3.7",  # lm.plot
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "tqdm>=4.60",  # progress lines
    ],
    extras_require={
        "eval": ["lm_eval>=0.4.9"],  # lm-evaluation-harness tasks on a workdir (lm/evaluate/harness.py)
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "tensorboard>=2.15", "lm_eval>=0.4.9"],
    },
)
