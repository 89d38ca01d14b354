"""Presets resolve to their documented values; overrides parse and fail clearly."""

import pytest

from coworld.config import ConfigError, load_config, parse_override, preset_names

# The documented values of each preset (the file's header names the source).
DOCUMENTED = {
    "dv2-official": {  # the authors' released code
        "model.latent": "gaussian", "model.stoch": 50, "model.deter": 200, "model.hidden": 200,
        "model.depth": 32, "model.kl_balance": 0.8, "model.free_nats": 1.0, "model.lr": 3e-4,
        "behaviour.horizon": 15, "behaviour.gamma": 0.99, "behaviour.lam": 0.95, "behaviour.actor_lr": 8e-5,
        "behaviour.critic_lr": 8e-5, "behaviour.actor_ent": 1e-4, "behaviour.actor_grad": "dynamics",
        "behaviour.eps": 1e-5, "behaviour.grad_clip": 100.0, "behaviour.slow_critic_every": 100,
        "train.batch": 150, "train.length": 50, "train.train_every": 5, "train.pretrain": 100,
    },
    "dv2-paper": {  # CoWorld paper Table 8
        "model.latent": "discrete", "model.stoch": 32, "model.classes": 32, "model.deter": 600,
        "model.hidden": 600, "behaviour.gamma": 0.995, "train.batch": 50, "train.length": 50,
    },
    "offline-dv2": {  # V-D4RL offlinedv2 configs.yaml + README
        "model.ensemble": 7, "model.latent": "discrete", "model.deter": 200, "model.hidden": 200,
        "model.layer_norm": True, "model.depth": 48, "model.weight_decay": 1e-6, "model.free_nats": 1.0,
        "behaviour.weight_decay": 1e-6, "behaviour.horizon": 5, "behaviour.critic_lr": 8e-5,
        "behaviour.critic_layers": 4, "train.batch": 64, "train.length": 50, "train.offline_penalty": 10.0,
        "train.offline_penalty_kind": "meandis", "train.offline_wm_updates": 25000, "model.init": "glorot",
    },
    "tiny": {
        "model.depth": 8, "model.deter": 64, "model.stoch": 16, "train.batch": 8, "train.length": 16,
        "model.latent": "gaussian", "model.free_nats": 0.1, "model.lr": 2e-3, "model.init": "glorot", "behaviour.actor_lr": 4e-4,
        "behaviour.critic_lr": 4e-4, "train.eval_episodes": 10,
    },
    "coworld-official": {  # released code, docs/algorithms.md#stage-a to #schedule
        "coworld.alpha": 1.5, "coworld.k": 0.3, "coworld.beta2": 1.0, "coworld.align_scale": "released",
        "coworld.eta_schedule": "frozen", "coworld.eta_frozen": 0.975, "coworld.block_steps": 10000,
        "coworld.warmup_blocks": 3, "coworld.wm_warmup_rounds": 2, "coworld.wm_warmup_updates": 10000,
        "coworld.outer_iters": 6,
        "coworld.target_blocks": 5, "coworld.source_blocks": 2, "train.prefill": 5000,
        "behaviour.gamma": 0.99, "model.latent": "gaussian",
    },
    "multitask-dv2": {  # paper Table 6's method with coworld-official's values (equal budgets)
        "model.deter": 200, "model.latent": "gaussian", "train.batch": 150, "train.prefill": 5000,
        "coworld.block_steps": 10000, "coworld.warmup_blocks": 3, "coworld.wm_warmup_updates": 10000,
        "coworld.outer_iters": 6, "coworld.target_blocks": 5, "coworld.source_blocks": 2,
        "behaviour.gamma": 0.99,
    },
    "coworld-paper": {  # paper Table 8
        "coworld.alpha": 1.0, "coworld.eta_schedule": "linear", "coworld.eta_floor": 0.2,
        "coworld.eta_start": 1.0, "behaviour.gamma": 0.995, "model.latent": "discrete",
        "model.deter": 600,
    },
    "lompo": {  # Rafailov et al. 2021's method; numbers from dv2-official, V-D4RL, MOPO and SAC (header)
        "model.ensemble": 7, "model.deter": 200, "train.batch": 150, "lompo.horizon": 5, "lompo.penalty": 1.0,
        "lompo.penalty_kind": "meandis", "lompo.real_ratio": 0.5, "lompo.batch": 256, "lompo.hidden": 256,
        "lompo.lr": 3e-4, "lompo.gamma": 0.99, "lompo.tau": 0.005, "lompo.wm_updates": 10000,
    },
    "drqbc": {  # V-D4RL drqbc/ (drqv2.py, cfgs config.yaml + offline_dmc.yaml + algo/drqv2.yaml)
        "modelfree.frame_stack": 3, "modelfree.nstep": 1, "modelfree.pad": 4, "modelfree.feature_dim": 50,
        "modelfree.hidden": 1024, "modelfree.filters": 32, "modelfree.conv_layers": 4, "modelfree.lr": 3e-4,
        "modelfree.critic_tau": 0.01, "modelfree.std_clip": 0.3, "modelfree.std_updates": 125000,
        "modelfree.bc_alpha": 2.5, "modelfree.actor": "drq", "train.batch": 256, "train.length": 4,
    },
    "cql": {  # V-D4RL drqbc/cql.py with algo/cql.yaml
        "modelfree.actor": "drq", "modelfree.lr": 3e-4, "modelfree.cql_weight": 1.0, "modelfree.cql_temp": 1.0,
        "modelfree.cql_samples": 10, "modelfree.cql_importance": False, "train.batch": 256,
    },
    "curl": {  # Laskin et al. 2020's table and MishaLaskin/curl
        "modelfree.actor": "sac", "modelfree.trunk_tanh": False, "modelfree.lr": 1e-3, "modelfree.actor_lr": 1e-3,
        "modelfree.encoder_lr": 1e-3, "modelfree.encoder_tau": 0.05, "modelfree.critic_tau": 0.01,
        "modelfree.init_temperature": 0.1, "modelfree.alpha_lr": 1e-4, "modelfree.alpha_beta": 0.5,
        "modelfree.actor_every": 2, "modelfree.target_every": 2, "modelfree.feature_dim": 50, "train.batch": 128,
    },
}


def get(cfg, dotted):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


@pytest.mark.parametrize("preset", sorted(DOCUMENTED))
def test_preset_resolves_to_documented_values(preset):
    cfg = load_config(preset)
    for key, value in DOCUMENTED[preset].items():
        assert get(cfg, key) == value, (preset, key)


def test_every_preset_is_documented_and_loads():
    assert set(preset_names()) == set(DOCUMENTED)


def test_overrides_parse_toml_literals_and_bare_words():
    cfg = load_config("tiny", ["model.deter=48", "model.latent=discrete", "behaviour.gamma=0.9",
                               "train.compile=true", "seed=4"])
    assert (cfg.model.deter, cfg.model.latent, cfg.behaviour.gamma, cfg.train.compile, cfg.seed) == \
        (48, "discrete", 0.9, True, 4)
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}


@pytest.mark.parametrize("override, message", [
    ("model.nope=1", "unknown setting"),
    ("model.detr=3", "did you mean model.deter"),
    ("modle.deter=3", "did you mean model"),
    ("model.deter=big", "integer"),
    ("model.latent=cube", "must be one of"),
    ("model", "section.key=value"),
    ("train.batch=0", "positive"),
    ("model.conv_remat=-1", "number of frames"),
    ("behaviour.actor_dist=beta", "trunc_normal"),
])
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="tiny"):
        load_config("no-such-preset")


def test_algorithm_brings_its_required_settings():
    """`--algo offline-dv2` works with a size preset: ensemble and penalty come with the algorithm,
    a preset that names them keeps its values, and --set wins over both."""
    from coworld.run.registry import get

    odv2, dreamer = get("offline-dv2").defaults, get("dreamer").defaults
    assert load_config("tiny").model.ensemble == 0
    cfg = load_config("tiny", defaults=odv2)
    assert (cfg.model.ensemble, cfg.train.offline_penalty) == (7, 10.0)
    assert load_config("tiny", ["model.ensemble=3"], defaults=odv2).model.ensemble == 3
    assert load_config("dv2-official", defaults=dreamer).model.ensemble == 0
