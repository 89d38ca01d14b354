"""The one way in for configuration.

A run is described by a :class:`Config`: nested dataclasses whose every field is
documented where it is declared. Presets are TOML files in ``coworld/presets``;
each states where its values come from (paper table, the authors' released code,
V-D4RL). A preset may ``extends = "other"`` another preset. Any value can be
overridden with dotted ``section.key=value`` strings (the CLI's ``--set``).

    cfg = load_config("tiny", overrides=["model.deter=64", "train.batch=8"])

Values in ``--set`` are parsed as TOML literals (``64``, ``1e-4``, ``true``,
``"text"``, ``[1, 2]``); a bare word that is not a TOML literal is taken as a
string, so ``--set model.latent=discrete`` works without quotes.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from coworld.errors import UserError


def cache_root() -> Path:
    """The user cache of this library (replay caches, compiled kernels, demo datasets):
    ``$COWORLD_CACHE``, else ``$XDG_CACHE_HOME/coworld``, else ``~/.cache/coworld``."""
    if os.environ.get("COWORLD_CACHE"):
        return Path(os.environ["COWORLD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "coworld"


class ConfigError(UserError):
    """A preset or override is malformed; the message says what to change."""


@dataclass
class ModelConfig:
    """DreamerV2 world model (docs/algorithms.md#world-model)."""

    depth: int = 32  # conv encoder/decoder base channels d (layers d, 2d, 4d, 8d)
    # > 0: in a batch of more frames than this, the conv encoder's and decoder's activations (and the
    # image loss's) are not kept for backward but recomputed there, in chunks of this many frames: one
    # more encoder and decoder forward per update for much less memory (docs/results.md "Update speed":
    # 256 at 150 x 50 frames on a CPU); smaller batches are unaffected; 0: always kept (the default)
    conv_remat: int = 0
    # Keypoints (docs/algorithms.md#world-model, "Keypoints"; not part of DreamerV2): k in 1..4 appends to the
    # embedding, for every channel of the encoder's k-th conv layer, the expected (x, y) in [-1, 1] of that
    # channel's spatial softmax, a code linear in where things are in the frame; 0 = off (DreamerV2's encoder)
    keypoints: int = 0
    keypoint_temp: float = 10.0  # initial inverse temperature of the keypoints' softmax (learned per channel)
    # > 0 (with keypoints): the latent also reconstructs the frame's keypoints (detached targets) through an
    # MLP head, this weight times their unit-variance NLL joining the world-model loss, so that the latent
    # keeps the positions the keypoints measure; 0 = no such term
    keypoint_scale: float = 0.0
    latent: str = "gaussian"  # "gaussian" (stoch dims) or "discrete" (stoch categoricals x classes)
    stoch: int = 50  # Gaussian latent size, or number of categoricals when discrete
    classes: int = 32  # classes per categorical (discrete latents only)
    deter: int = 200  # GRU state size h
    hidden: int = 200  # width of the RSSM's input/prior/posterior MLPs
    layer_norm: bool = False  # LayerNorm inside the GRU cell (DMC configs use it)
    min_std: float = 0.1  # Gaussian latents: std = 2*sigmoid(x/2) + min_std
    units: int = 400  # width of reward / discount head MLPs
    reward_layers: int = 2  # hidden layers of the reward head
    discount_head: bool = False  # predict episode continuation (off in the paper configs)
    discount_layers: int = 3
    kl_balance: float = 0.8  # alpha_kl on KL(sg q || p); 1 - alpha on KL(q || sg p)
    free_nats: float = 1.0  # applied to the batch-mean KL (docs/algorithms.md#world-model)
    kl_scale: float = 1.0
    reward_scale: float = 1.0  # c_r: 1 for Meta-World / RoboDesk, 2 for DMC
    discount_scale: float = 1.0
    ensemble: int = 0  # Offline DV2: number of extra prior (transition) heads; 0 = plain DV2
    lr: float = 3e-4  # world model Adam learning rate
    weight_decay: float = 0.0  # world model: weights *= (1 - wd) before every Adam step (DreamerV2 / V-D4RL)
    # initial weights of the world model's, actor's and critic's linear and conv layers
    # (docs/algorithms.md#world-model): "torch" = PyTorch's defaults (the CoWorld release, a PyTorch
    # port); "glorot" = Glorot-uniform weights and zero biases (DreamerV2's and V-D4RL's TensorFlow code)
    init: str = "torch"


@dataclass
class BehaviourConfig:
    """Actor-critic learning in imagination (docs/algorithms.md#behaviour-learning)."""

    horizon: int = 15  # imagination steps H
    gamma: float = 0.99  # discount (0.99 released code, 0.995 paper table)
    lam: float = 0.95  # lambda of the lambda-return
    actor_grad: str = "dynamics"  # "dynamics" | "reinforce" | "both" (mix, see actor_grad_mix)
    actor_grad_mix: float = 0.1  # weight of the dynamics term when actor_grad == "both"
    actor_ent: float = 1e-4  # eta_ent, entropy bonus
    actor_layers: int = 4
    actor_units: int = 400
    actor_min_std: float = 0.1
    # "normal": Gaussian around tanh(mean), samples unbounded and clipped to [-1, 1] where they are used
    # (the CoWorld release); "trunc_normal": the same Gaussian truncated to [-1, 1] (DreamerV2's choice
    # for continuous control), docs/algorithms.md#behaviour-learning
    actor_dist: str = "normal"
    critic_layers: int = 3
    critic_units: int = 400
    slow_critic_every: int = 100  # hard copy critic -> slow critic every N updates
    actor_lr: float = 8e-5
    critic_lr: float = 8e-5
    eps: float = 1e-5  # Adam epsilon for all three optimizers
    grad_clip: float = 100.0  # grad-norm clip for all three optimizers
    weight_decay: float = 0.0  # actor and critic: weights *= (1 - wd) before every Adam step (V-D4RL)
    # > 0: when an update imagines from more start states than this (B x L), it imagines and back-propagates
    # them in chunks of this many, accumulating the gradients before one optimizer step: the same expected
    # update (the actor's noise is drawn chunk by chunk), much smaller tensors (docs/results.md "Update speed":
    # 1024 at 150 x 50 on a CPU); 0: all at once (the default)
    imag_chunk: int = 0


@dataclass
class TrainConfig:
    """Data, update schedule and run-time settings shared by all algorithms."""

    batch: int = 16  # B sequences per update
    length: int = 50  # L steps per sequence
    sampling: str = "uniform"  # "uniform" (episode, then window) or "length" (weighted by length)
    train_every: int = 5  # online: one update per this many agent steps
    prefill: int = 5000  # online: random-action agent steps before training
    pretrain: int = 100  # online: burst of updates on the first training call
    expl_noise: float = 0.0  # extra Gaussian exploration noise on collected actions
    eval_every: int = 10000  # agent steps (online) or updates (offline) between evaluations
    eval_episodes: int = 10  # episodes per evaluation (actor's mean action)
    eval_envs: int = 10  # environments an evaluation steps in lockstep, the policy acting on all at once (at most
    # eval_episodes; 1 = one episode after another): the same episode seeds either way
    value_steps: int = 50  # Fig. 5b: first N states of each evaluation episode whose critic values are
    #   compared with the discounted rewards actually obtained from them (docs/algorithms.md)
    log_every: int = 1000  # agent steps (online) or updates (offline) between scalar logs
    checkpoint_every: int = 2000  # agent steps (online) or updates (offline) between checkpoints
    video_every: int = 5  # write a GIF of the first episode of every N-th evaluation (0 = never)
    offline_penalty: float = 0.0  # Offline DV2: reward penalty lambda on ensemble disagreement
    offline_penalty_kind: str = "meandis"  # Offline DV2's u: "meandis" (V-D4RL's recommended) or "std"
    offline_wm_updates: int = 0  # Offline DV2: world-model-only updates first, then agent-only updates with the
    #   model frozen (V-D4RL: 25,000 then the agent); 0 = world model and agent updated together every step
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    amp: str = "none"  # mixed precision: "none" | "bf16" | "fp16"
    compile: bool = False  # torch.compile each step's forward+loss (+ its compiled backward); eager = the reference (docs/results.md#update-speed)
    threads: int = 0  # torch CPU threads; 0 = the cores free when the run starts (cores minus load average), kept on resume
    # "heap": on Linux with glibc, tensors of any size come from the C heap and freed memory stays there for
    # the next update, instead of large tensors being mapped afresh and page-faulted in at every update
    # (docs/results.md "Update speed": 1.25x per 16 x 50 update on a CPU, ~17% more resident memory);
    # "system": the C library's defaults. Process-wide, applied when a run or `coworld bench` starts;
    # results are unchanged and GPU memory is not concerned
    malloc: str = "heap"
    wandb: bool = False  # also send the scalars to Weights & Biases (pip install 'coworld[wandb]'); off by default
    wandb_project: str = "coworld"  # W&B project of the run
    wandb_group: str = ""  # W&B group ("" = none); `coworld sweep --wandb` sets the experiment's name


@dataclass
class EnvConfig:
    """Environment options passed to :func:`coworld.envs.make`."""

    image_size: int = 64
    action_repeat: int = 0  # 0 = the registered default of the environment
    time_limit: int = 0  # agent steps per episode; 0 = the registered default
    options: dict = field(default_factory=dict)  # extra keyword options for the env


@dataclass
class ModelFreeConfig:
    """The model-free pixel baselines DrQ+BC, CQL and CURL (docs/algorithms.md#model-free-pixel-baselines).
    Defaults are V-D4RL's DrQ+BC / CQL on its offline DMC data (drqbc/cfgs: config.yaml, offline_dmc.yaml,
    algo/*.yaml); CURL's differences come with its registry entry (coworld/presets/curl.toml lists them)."""

    frame_stack: int = 3  # K frames per observation (stacks never cross an episode start)
    nstep: int = 1  # n of the n-step TD target (V-D4RL offline_dmc: 1; its online DrQ-v2 config: 3)
    gamma: float = 0.99  # discount of the TD target
    pad: int = 4  # random shift: images moved by up to +-pad pixels (replicate padding); 0 = no augmentation
    filters: int = 32  # conv encoder channels per layer
    conv_layers: int = 4  # 3x3 conv layers (the first with stride 2)
    feature_dim: int = 50  # output of the actor's and the critic's trunk (Linear -> LayerNorm)
    hidden: int = 1024  # width of the two hidden layers of the actor and Q heads
    trunk_tanh: bool = True  # tanh after the trunk's LayerNorm (DrQ-v2: yes; CURL: no)
    actor: str = "drq"  # "drq": tanh mean + scheduled fixed std (DrQ-v2); "sac": learned std + temperature (CURL)
    std_start: float = 1.0  # drq actor: exploration std schedule, linear from std_start ...
    std_end: float = 0.1  # ... to std_end ...
    std_updates: int = 125_000  # ... over this many updates (V-D4RL: linear(1.0,0.1,250000) in steps, 2 per update)
    std_clip: float = 0.3  # drq actor: the noise of sampled actions is clipped to +-std_clip
    log_std_min: float = -10.0  # sac actor: log std range (CURL)
    log_std_max: float = 2.0
    init_temperature: float = 0.1  # sac actor: initial alpha (CURL); target entropy -A
    alpha_lr: float = 1e-4  # sac actor: temperature learning rate (CURL) ...
    alpha_beta: float = 0.5  # ... and its Adam beta1 (CURL)
    lr: float = 3e-4  # critic and encoder Adam learning rate (V-D4RL offline_dmc: 3e-4)
    actor_lr: float = 3e-4  # actor Adam learning rate
    encoder_lr: float = 1e-3  # CURL: learning rate of the contrastive step (encoder, critic trunk, W)
    critic_tau: float = 0.01  # Polyak rate of the target Q heads (and, without a key encoder, the target trunk)
    encoder_tau: float = 0.05  # CURL: Polyak rate of the momentum key encoder and the target trunk
    actor_every: int = 1  # updates between actor steps (V-D4RL: every update; CURL: 2)
    target_every: int = 1  # updates between target averagings (V-D4RL: every update; CURL: 2)
    bc_alpha: float = 2.5  # DrQ+BC: TD3+BC's alpha, lambda = alpha / mean |Q|
    cql_weight: float = 1.0  # CQL: weight of the conservative term (V-D4RL min_q_weight)
    cql_temp: float = 1.0  # CQL: temperature of the log-sum-exp
    cql_samples: int = 10  # CQL: uniform and policy actions sampled per state, each (V-D4RL num_random)
    cql_importance: bool = False  # CQL: divide the samples by their proposal densities (Kumar et al. App. F)


@dataclass
class CoWorldConfig:
    """CoWorld's collaborative terms and schedule (docs/algorithms.md#stage-a to #multi-source)."""

    beta2: float = 1.0  # weight of the state-alignment KL, Eq. 3 (per-frame mean; see align_scale)
    align_scale: str = "released"  # "released": multiply per-frame mean by L (sum over time, as released code)
    alpha: float = 1.5  # weight of the min-max value term, Eq. 6 (1.5 released, 1 paper)
    k: float = 0.3  # target-informed reward factor, Eq. 4: weight of the true target reward
    eta_schedule: str = "linear"  # "linear" (paper: decay) or "frozen" (released code)
    eta_start: float = 1.0
    eta_floor: float = 0.2
    #   "linear" runs from eta_start at the first reward-alignment update to eta_floor at the end of
    #   that stage (docs/algorithms.md, "Stage B")
    eta_frozen: float = 0.975  # the released code's effective value when "frozen"
    action_adapter: str = "pad"  # "pad": keep first min(A_S, A_T) dims, zero-pad the rest; "strict": equal dims
    warmup_blocks: int = 3  # source-only Dreamer blocks before any target training
    block_steps: int = 10_000  # agent steps per source block
    wm_warmup_rounds: int = 2  # rounds of [target world-model-only updates, source block]
    wm_warmup_updates: int = 10_000  # target world-model updates per warm-up round (released: eval_every)
    outer_iters: int = 6
    target_blocks: int = 5  # target blocks per outer iteration (2 for DMC)
    source_blocks: int = 2  # source blocks per outer iteration
    # Ablations (paper Fig. 5): switch off a stage, or drop the max in stage C.
    state_align: bool = True  # stage A
    reward_align: bool = True  # stage B
    value_constraint: bool = True  # stage C
    no_max: bool = False  # "w/o max": alpha * v_T instead of alpha * max(v_T, sg v_S)
    # A pessimistic target (not in the paper; docs/algorithms.md#pessimistic-target): target_ensemble = K >= 2
    #   makes the target agent an Offline DV2 agent, K prior heads and its imagined reward lowered by
    #   target_penalty x their disagreement (train.offline_penalty_kind); the sources stay plain DreamerV2.
    #   0: the paper's plain DreamerV2 target.
    target_ensemble: int = 0
    target_penalty: float = 1.0
    # Source simulators (docs/algorithms.md#state-input-source): env options applied to the source envs
    #   only, over env.options; {obs = "state"} makes the sources state-input (paper Table 4: an MLP
    #   encoder reads obs["state"]), {reward = "sparse"} gives sparse-reward sources (Table 5).
    source_options: dict = field(default_factory=dict)
    target_states: bool = True  # a state-input source may read the target dataset's `state` key (training
    #   only; the target policy reads images) so that stages A and B run; false: A and B are switched off
    # DV2 Finetune + EWC (docs/algorithms.md#dv2-finetune-ewc): penalty lambda/2 * sum_i F_i (theta_i - theta*_i)^2
    ewc_lambda: float = 1.0  # lambda; 1 = EWC's Laplace estimate of the source loss's growth (the paper gives none)
    ewc_batches: int = 100  # N source batches whose squared batch gradients (times B) are averaged into F


@dataclass
class LompoConfig:
    """LOMPO and LOMPO Finetune (docs/algorithms.md#lompo): SAC on latent features, trained on a mix
    of real latent transitions and uncertainty-penalised model rollouts. The ensemble of latent
    forward models is ``model.ensemble`` (prior heads of the RSSM)."""

    penalty: float = 1.0  # lambda: model reward = predicted reward - lambda * u (the ensemble's disagreement)
    penalty_kind: str = "meandis"  # u: "meandis" / "std" (Offline DV2's measures) or "loglik_var" (variance over
    #   members of the log-likelihood of the sampled next latent)
    horizon: int = 5  # H: latent rollout steps from each start
    rollout_starts: int = 64  # posterior latents of the update's window a rollout starts from (at most B * L)
    rollout_every: int = 1  # updates between two rollout batches (after the model-only updates)
    buffer: int = 20_000  # model transitions kept (oldest dropped first); checkpointed with the agent
    real_ratio: float = 0.5  # fraction of every SAC batch drawn from real latent transitions (the rest: the buffer)
    batch: int = 256  # transitions per SAC update
    wm_updates: int = 0  # world-model-only updates first; then every update trains model and SAC
    sac_updates: int = 1  # SAC gradient steps per update
    hidden: int = 256  # SAC actor / twin Q MLPs: two hidden layers of this width
    lr: float = 3e-4  # SAC actor, critic and temperature learning rate
    gamma: float = 0.99  # SAC discount
    tau: float = 0.005  # SAC target-network averaging rate


@dataclass
class Config:
    preset: str = "default"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    modelfree: ModelFreeConfig = field(default_factory=ModelFreeConfig)
    coworld: CoWorldConfig = field(default_factory=CoWorldConfig)
    lompo: LompoConfig = field(default_factory=LompoConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        cfg = cls()
        _apply(cfg, data, where="config")
        return cfg


def preset_names() -> list[str]:
    root = resources.files("coworld.presets")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def _read_preset(name: str) -> dict:
    path = Path(name)
    if path.suffix == ".toml" and path.exists():
        text = path.read_text()
    else:
        res = resources.files("coworld.presets") / f"{name}.toml"
        if not res.is_file():
            raise ConfigError(
                f"unknown preset {name!r}; available: {', '.join(preset_names())} "
                "(or give a path to a .toml file)"
            )
        text = res.read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset {name!r} is not valid TOML: {exc}") from None


def _resolve_preset(name: str, seen: tuple[str, ...] = ()) -> dict:
    if name in seen:
        raise ConfigError(f"preset inheritance loop: {' -> '.join(seen + (name,))}")
    data = _read_preset(name)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    merged = _resolve_preset(parent, seen + (name,))
    for section, values in data.items():
        if isinstance(values, dict):
            merged.setdefault(section, {}).update(values)
        else:
            merged[section] = values
    return merged


def _apply(obj: Any, data: dict, where: str) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            path = f"{where}.{key}" if where else key
            hint = f"; did you mean {path[: -len(key)]}{close[0]}?" if close else ";"
            raise ConfigError(f"unknown setting {path}{hint} known here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} is a section; set its fields, e.g. {key}.<name>=...")
            _apply(current, value, f"{where}.{key}" if where else key)
        else:
            setattr(obj, key, _coerce(value, current, f"{where}.{key}"))


def _coerce(value: Any, current: Any, where: str) -> Any:
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if isinstance(current, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if isinstance(current, dict):
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{where} must be a table, got {value!r}")
    return value


def parse_override(text: str) -> dict:
    """``"model.deter=64"`` -> ``{"model": {"deter": 64}}``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. model.deter=64)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(preset: str = "tiny", overrides: list[str] | tuple[str, ...] = (), defaults: dict | None = None) -> Config:
    """Resolve a preset (with ``extends``) over ``defaults`` (an algorithm's required settings, from
    its registry entry: they sit between the dataclass defaults and the preset, so a preset that names
    a value keeps it), then apply ``section.key=value`` overrides."""
    cfg = Config()
    data = _resolve_preset(preset)
    data.pop("source", None)  # provenance text; kept in the file, not in the config
    _apply(cfg, defaults or {}, where="algorithm defaults")
    _apply(cfg, data, where=preset)
    cfg.preset = preset
    for text in overrides:
        _apply(cfg, parse_override(text), where="")
    validate(cfg)
    return cfg


_CHOICES = {
    ("model", "latent"): ("gaussian", "discrete"),
    ("behaviour", "actor_grad"): ("dynamics", "reinforce", "both"),
    ("behaviour", "actor_dist"): ("normal", "trunc_normal"),
    ("model", "init"): ("torch", "glorot"),
    ("train", "sampling"): ("uniform", "length"),
    ("train", "amp"): ("none", "bf16", "fp16"),
    ("train", "malloc"): ("heap", "system"),
    ("train", "offline_penalty_kind"): ("meandis", "std"),
    ("coworld", "eta_schedule"): ("linear", "frozen"),
    ("coworld", "align_scale"): ("released", "per_frame"),
    ("modelfree", "actor"): ("drq", "sac"),
    ("coworld", "action_adapter"): ("pad", "strict"),
    ("lompo", "penalty_kind"): ("meandis", "std", "loglik_var"),
}


def validate(cfg: Config) -> None:
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"{section}.{key} must be one of {', '.join(choices)}; got {value!r}")
    if cfg.coworld.target_ensemble == 1 or cfg.coworld.target_ensemble < 0:
        raise ConfigError(f"coworld.target_ensemble must be 0 (a plain DreamerV2 target) or at least 2 (prior heads "
                          f"of a pessimistic target); got {cfg.coworld.target_ensemble}")
    positive = [
        ("train", "batch"), ("train", "length"), ("behaviour", "horizon"), ("model", "depth"),
        ("model", "deter"), ("model", "stoch"), ("train", "train_every"),
    ]
    for section, key in positive:
        if getattr(getattr(cfg, section), key) <= 0:
            raise ConfigError(f"{section}.{key} must be positive")
    if cfg.model.conv_remat < 0:
        raise ConfigError(f"model.conv_remat must be 0 (off) or a number of frames; got {cfg.model.conv_remat}")
    if cfg.behaviour.imag_chunk < 0:
        raise ConfigError(f"behaviour.imag_chunk must be 0 (off) or a number of start states; "
                          f"got {cfg.behaviour.imag_chunk}")
