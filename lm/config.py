"""The run config. Config files and `--config.KEY=VALUE` overrides write an ml_collections ConfigDict
(`defaults()` is where every file starts); `build` turns it, once per command, into the typed, frozen RunConfig
the code reads. Each section and its checks live beside what it configures; a key is defined once, as a field
of its section, with its type, default and meaning."""

import dataclasses
import difflib
from typing import Any

import ml_collections

from lm import schedules, section
from lm.backends.select import ATTENTION, MATMUL
from lm.data.config import DataConfig
from lm.errors import UserError
from lm.model.config import ModelConfig
from lm.optim import OptimConfig
from lm.parallel.config import MeshConfig
from lm.section import key, require
from lm.tokenizer.config import TokenizerConfig
from lm.train.config import CheckpointConfig, EvalConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run is: where it starts, its data, tokenizer, model, training, evaluation, optimizer,
    checkpoints and mesh. `model.vocab_size` is 0 here: the tokenizer sets it (`model_config`)."""

    seed: int = key(0, "parameters' initialization and the data order")
    init_from: str = key("", "'WORKDIR' or 'WORKDIR:STEP': start from that run's parameters and tokenizer ('' = "
                             "from scratch)")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        m, o = self.model, self.optim
        for name, allowed in (("attention", ("auto", *ATTENTION)), ("matmul", ("auto", *MATMUL))):
            value = getattr(m, name)
            require(value in allowed, f"config.model.{name} must be one of {allowed}, got {value!r}")
        if o.schedule == "wsd":
            span = schedules.horizon(o, self.train.steps)
            cooldown = schedules.cooldown_steps(o, span)
            require(cooldown <= span - o.warmup_steps,
                    f"config.optim.cooldown_steps={cooldown} is longer than the run after its warmup (schedule "
                    f"steps {span} - warmup_steps {o.warmup_steps} = {span - o.warmup_steps}); shorten the "
                    "cooldown or lengthen the run")

    def to_dict(self) -> dict[str, Any]:
        """The config as data, in the ConfigDict's shape (what checkpoints and the workdir record)."""
        d = dataclasses.asdict(self)
        del d["model"]["vocab_size"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """From `to_dict()`'s output, also one an older lm saved (keys added since take their defaults)."""
        sections = {f.name: section.from_dict(f.default_factory, d.get(f.name) or {})
                    for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING}
        return cls(**{k: v for k, v in d.items() if k in ("seed", "init_from")}, **sections)


def _keys(cls: type) -> ml_collections.ConfigDict:
    c = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            c[f.name] = _keys(f.default_factory)
        elif (cls, f.name) != (ModelConfig, "vocab_size"):
            c[f.name] = f.default
    return ml_collections.ConfigDict(c)


def defaults() -> ml_collections.ConfigDict:
    """Every key a run config has, with its default; config files start here and override."""
    return _keys(RunConfig)


def _check_keys(cfg: ml_collections.ConfigDict, known: ml_collections.ConfigDict, prefix: str = "config") -> None:
    for k in cfg.keys():
        if k not in known:
            close = difflib.get_close_matches(k, list(known.keys()), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown config key {prefix}.{k}{hint}; `python -m lm.train --print_config` "
                                    "lists every key")
        if isinstance(known[k], ml_collections.ConfigDict):
            _check_keys(cfg[k], known[k], f"{prefix}.{k}")


def build(cfg: ml_collections.ConfigDict) -> RunConfig:
    """The RunConfig of a config file's ConfigDict; one line naming the key and the fix if it cannot run."""
    _check_keys(cfg, defaults())
    return RunConfig.from_dict(cfg.to_dict())


def model_config(run: RunConfig, vocab_size: int) -> ModelConfig:
    """The run's ModelConfig with the vocabulary size of its tokenizer."""
    return dataclasses.replace(run.model, vocab_size=vocab_size)


def lines(run: RunConfig) -> list[str]:
    """Every key of `run` as 'section.key = value  # meaning', for `lm.train --print_config`."""
    out = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif (type(obj), f.name) != (ModelConfig, "vocab_size"):
                out.append(f"{prefix}{f.name} = {value!r}  # {section.meaning(f)}")

    walk(run, "")
    return out
