"""The one list of algorithms: for each name, its one-line summary, what ``--steps`` counts, the
inputs it needs, the settings it brings, how its agent is built, how it trains and how a saved run
of it is evaluated. The CLI's choices and help, ``coworld.train`` / ``coworld.evaluate`` and the
demo's methods read this table (``coworld bench`` times the DreamerV2 updates directly); adding an
algorithm is one module (its agent and losses, in ``coworld/algos``) plus one entry here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from coworld.errors import UserError


@dataclass(frozen=True)
class Algorithm:
    name: str
    summary: str  # one line, shown by `coworld train --help` and in the docs
    unit: str  # what --steps counts
    progress_unit: str  # the progress bar's unit (CoWorld: a source step, or a target update counted as train_every)
    needs: tuple[str, ...]  # required inputs (keyword names of coworld.train)
    optional: tuple[str, ...]  # optional inputs
    train: Callable  # (session, inputs) -> exit code; inputs: the needs, optionals and the built "agent"
    policy: Callable  # (run_args, cfg, checkpoint) -> (policy acting in the env, env id or None)
    make_agent: Callable | None = None  # (cfg, action_dim, device) -> agent (single-agent algorithms)
    defaults: dict = field(default_factory=dict)  # settings it needs; a preset's or --set's values win
    extendable: bool = True  # a larger --steps continues a finished run
    demo: str | None = None  # its name in `coworld demo --methods`
    one_source: bool = False  # trains with exactly one --source (one agent pretrained there, or one shared model)


def _dreamer_agent(cfg, action_dim, device):
    from coworld.algos.dreamer import DreamerAgent

    return DreamerAgent(cfg, action_dim, device=device)


def _offline_dv2_agent(cfg, action_dim, device):
    from coworld.algos.offline_dv2 import OfflineDV2Agent

    return OfflineDV2Agent(cfg, action_dim, device=device)


def _lompo_agent(cfg, action_dim, device):
    from coworld.algos.lompo import LompoAgent

    return LompoAgent(cfg, action_dim, device=device)


def _train_lompo_finetune(session, inputs):
    from coworld.run.lompo import train_lompo_finetune

    return train_lompo_finetune(session, inputs)


def _lompo_finetune_policy(run_args, cfg, state):
    from coworld.run.lompo import evaluation_agent

    return evaluation_agent(run_args, cfg, state)


def _train_online(session, inputs):
    from coworld.run.train import train_dreamer

    return train_dreamer(session, inputs["agent"], inputs["env"])


def _train_offline(session, inputs):
    from coworld.run.train import train_offline

    return train_offline(session, inputs["agent"], inputs["dataset"], inputs.get("env"))


def _train_cotrain(finetune: bool, ewc: bool = False):
    def train(session, inputs):
        from coworld.run.cotrain import CoWorldTrainer

        return CoWorldTrainer(session, inputs["source"], inputs["target_dataset"], inputs.get("target_env"),
                              finetune=finetune, ewc=ewc).run()

    return train


def _model_free_agent(name: str):
    def make(cfg, action_dim, device):
        from coworld.algos.model_free import AGENTS

        return AGENTS[name](cfg, action_dim, device=device)

    return make


# The model-free pixel baselines (docs/algorithms.md#model-free-pixel-baselines): one window of
# frame_stack + nstep steps per transition. DrQ+BC and CQL take V-D4RL's values (the [modelfree]
# defaults); CURL brings its SAC actor and rates (Laskin et al. 2020; coworld/presets/curl.toml).
_V_D4RL_BATCH = {"train": {"batch": 256, "length": 4}}
_CURL_DEFAULTS = {"train": {"batch": 128, "length": 4},
                  "modelfree": {"actor": "sac", "trunk_tanh": False, "lr": 1e-3, "actor_lr": 1e-3, "encoder_lr": 1e-3,
                                "actor_every": 2, "target_every": 2}}


def _single_policy(run_args, cfg, state):
    agent = get(run_args["algo"]).make_agent(cfg, state["dims"]["agent"], "cpu")
    agent.load_checkpoint_state(state["agent"])
    return agent, run_args.get("env")


def _cotrain_policy(run_args, cfg, state):
    from coworld.run.cotrain import evaluation_agent

    return evaluation_agent(run_args, cfg, state)


def _train_multitask(session, inputs):
    from coworld.run.multitask import train_multitask

    return train_multitask(session, inputs["source"], inputs["target_dataset"], inputs.get("target_env"))


def _multitask_policy(run_args, cfg, state):
    from coworld.run.multitask import evaluation_agent

    return evaluation_agent(run_args, cfg, state)


# LOMPO's ensemble of latent forward models (docs/algorithms.md#lompo); presets may change it
LOMPO_DEFAULTS = {"model": {"ensemble": 5}}

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in [
    Algorithm("dreamer", "DreamerV2 trained online in --env (Hafner et al. 2021)", "environment (agent) steps", "step",
              ("env",), (), _train_online, _single_policy, _dreamer_agent),
    Algorithm("offline-dv2", "Offline DreamerV2 on --dataset, ensemble-disagreement reward penalty (V-D4RL)",
              "gradient updates", "update", ("dataset",), ("env",), _train_offline, _single_policy, _offline_dv2_agent,
              defaults={"model": {"ensemble": 7}, "train": {"offline_penalty": 10.0}}, demo="Offline DV2"),
    Algorithm("coworld", "CoWorld: target agent on --target-dataset, aligned with source agents online in --source",
              "source environment steps (the whole schedule is scaled to them)",
              "unit", ("source", "target_dataset"),
              ("target_env",), _train_cotrain(False), _cotrain_policy, extendable=False, demo="CoWorld"),
    Algorithm("dv2-finetune", "DreamerV2 pretrained online in --source, then finetuned on --target-dataset",
              "source environment steps (CoWorld's schedule and budget)",
              "unit", ("source", "target_dataset"),
              ("target_env",), _train_cotrain(True), _cotrain_policy, extendable=False, demo="DV2 Finetune",
              one_source=True),
    Algorithm("dv2-finetune-ewc", "DV2 Finetune with an EWC penalty towards the pretrained source weights "
              "(Kirkpatrick et al. 2017)", "source environment steps (CoWorld's schedule and budget)",
              "unit", ("source", "target_dataset"), ("target_env",), _train_cotrain(True, ewc=True), _cotrain_policy,
              extendable=False, demo="DV2 Finetune + EWC", one_source=True),
    Algorithm("lompo", "LOMPO on --dataset: latent model with a forward-model ensemble, SAC on real latents and "
              "uncertainty-penalised latent rollouts (Rafailov et al. 2021)", "gradient updates", "update",
              ("dataset",), ("env",), _train_offline, _single_policy, _lompo_agent,
              defaults=LOMPO_DEFAULTS, demo="LOMPO"),
    Algorithm("lompo-finetune", "LOMPO trained online in --source, then on --target-dataset (DV2 Finetune's schedule)",
              "source environment steps (CoWorld's schedule and budget)", "unit", ("source", "target_dataset"),
              ("target_env",), _train_lompo_finetune, _lompo_finetune_policy, defaults=LOMPO_DEFAULTS,
              extendable=False, demo="LOMPO Finetune", one_source=True),
    Algorithm("multitask-dv2", "Multi-Task DreamerV2: one world model on --source (online) and --target-dataset "
              "together, an actor-critic per domain", "source environment steps (CoWorld's schedule and budget)",
              "unit", ("source", "target_dataset"), ("target_env",), _train_multitask, _multitask_policy,
              extendable=False, demo="Multi-Task DV2", one_source=True),
    Algorithm("drqbc", "DrQ+BC on --dataset: TD3+BC on a DrQ pixel encoder with random shifts (V-D4RL)",
              "gradient updates", "update", ("dataset",), ("env",), _train_offline, _single_policy,
              _model_free_agent("drqbc"), defaults=_V_D4RL_BATCH, demo="DrQ+BC"),
    Algorithm("cql", "CQL from pixels on --dataset: conservative Q-learning on the DrQ encoder (Kumar et al. 2020; "
              "V-D4RL's variant)", "gradient updates", "update", ("dataset",), ("env",), _train_offline,
              _single_policy, _model_free_agent("cql"), defaults=_V_D4RL_BATCH, demo="CQL"),
    Algorithm("curl", "CURL on --dataset: SAC with a contrastive loss and a momentum key encoder (Laskin et al. 2020)",
              "gradient updates", "update", ("dataset",), ("env",), _train_offline, _single_policy,
              _model_free_agent("curl"), defaults=_CURL_DEFAULTS, demo="CURL"),
]}


def names() -> list[str]:
    return list(ALGORITHMS)


def get(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        close = difflib.get_close_matches(name, ALGORITHMS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown algorithm {name!r}{hint} Known: {', '.join(ALGORITHMS)}") from None


def help_text() -> str:
    """One line per algorithm, with the unit of --steps (for `coworld train --help`)."""
    return "\n".join(f"  {a.name}: {a.summary}; --steps counts {a.unit}" for a in ALGORITHMS.values())
