"""CoWorld co-training: two (or K + 1) DreamerV2 agents on the released schedule
(docs/algorithms.md, "Schedule").

The collaborative terms themselves (stages A, B, C; Eqs. 3-6) live in
:mod:`coworld.algos.coworld`; this module decides *when* each runs:

1. prefill each source replay with random actions;
2. source warm-up: ``warmup_blocks`` blocks of online Dreamer training per source;
3. pick the closest source (multi-source, paper Appendix C; trivial with one source);
4. ``wm_warmup_rounds`` x [``wm_warmup_updates`` target world-model-only updates with state
   alignment (A), one source block with reward alignment (B)];
5. ``outer_iters`` x [re-select the source, ``target_blocks`` blocks of full target
   updates (A on the world model, C on the critic), each preceded by an evaluation
   of the target policy, then ``source_blocks`` source blocks with B]; the last iteration
   has no source blocks (they could not change the target); a final evaluation.

Units. A source block is ``block_steps`` source agent steps (one update per
``train_every`` steps); a target block is the same number of *updates* as a source
block (``block_steps // train_every``), driven by an update counter: the target
simulator, if any, is used only for evaluation. ``--steps N`` is the total number
of source agent steps; every count of the preset's schedule (blocks, prefill, world-model
warm-up) is scaled by N / (the preset's full source steps), so a small N still runs
every stage. Every stage keeps at least one update: the prefill holds at least one
episode plus one batch window, so the source warm-up trains from its first step.

DV2 Finetune (paper Section 4, baselines) reuses the same pieces: pretrain one agent online
in the source, then finetune all of it on the offline target data; DV2 Finetune + EWC adds an
elastic-weight-consolidation penalty towards the pretrained weights (:mod:`coworld.algos.ewc`).

``coworld.source_options`` are env options for the source simulators only; ``{obs = "state"}``
gives state-input sources (paper Table 4, docs/algorithms.md#state-input-source).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from coworld import envs
from coworld.algos.coworld import (
    ActionAdapter,
    StateSourceAgent,
    domain_distances,
    eta_at,
    reward_alignment_hook,
    select_source,
    state_alignment_hook,
    value_constraint_hook,
)
from coworld.algos.dreamer import DreamerAgent
from coworld.algos.ewc import EWC, ewc_hooks
from coworld.algos.offline_dv2 import OfflineDV2Agent
from coworld.config import Config
from coworld.errors import UserError
from coworld.data.replay import Replay
from coworld.run.driver import Collector
from coworld.run.session import Session
from coworld.run.loop import BaseTrainer, run_loop
from coworld.run.train import check_dataset, log_openloop, make_env, make_eval_envs, run_evaluation, updates_due


@dataclass(frozen=True)
class Phase:
    kind: str  # "prefill" | "source" | "target_wm" | "target"
    length: int  # agent steps (prefill, source) or updates (target_wm, target)
    source: int = -1  # source index for prefill/source phases; -1 = the selected source
    align: bool = False  # source phases: with reward alignment (stage B)
    select: bool = False  # choose the closest source when the phase starts
    evaluate: bool = False  # evaluate the target policy when the phase starts
    cost: int = 1  # progress units per step of this phase (a target update = train_every)


def full_source_steps(cfg: Config, num_sources: int) -> int:
    """Source agent steps of the preset's unscaled schedule."""
    c = cfg.coworld
    per_source = cfg.train.prefill + c.warmup_blocks * c.block_steps
    blocks = c.wm_warmup_rounds + max(c.outer_iters - 1, 0) * c.source_blocks
    return num_sources * per_source + blocks * c.block_steps


def build_schedule(cfg: Config, steps: int, num_sources: int, min_prefill: int = 1) -> list[Phase]:
    """The phases of a CoWorld run with ``steps`` source agent steps in total (see module doc).
    ``min_prefill``: the fewest prefill steps per source (one episode plus one batch window)."""
    c, t = cfg.coworld, cfg.train
    scale = steps / full_source_steps(cfg, num_sources)
    te = t.train_every
    block = max(te, round(c.block_steps * scale))
    updates = max(1, block // te)
    wm_updates = max(1, round(c.wm_warmup_updates * scale))
    prefill = max(min_prefill, round(t.prefill * scale))
    phases = []
    for i in range(num_sources):
        phases.append(Phase("prefill", prefill, source=i))
        phases += [Phase("source", block, source=i) for _ in range(c.warmup_blocks)]
    for r in range(c.wm_warmup_rounds):
        phases.append(Phase("target_wm", wm_updates, select=(r == 0), cost=te))
        phases.append(Phase("source", block, align=True))
    for it in range(c.outer_iters):
        for b in range(c.target_blocks):
            phases.append(Phase("target", updates, select=(b == 0), evaluate=True, cost=te))
        if it < c.outer_iters - 1:
            phases += [Phase("source", block, align=True) for _ in range(c.source_blocks)]
    return phases


def finetune_schedule(cfg: Config, steps: int, min_prefill: int = 1) -> list[Phase]:
    """DV2 Finetune with CoWorld's budget: the same source steps, then the same number of
    target updates (in blocks of the same size, each preceded by an evaluation)."""
    coworld = build_schedule(cfg, steps, 1, min_prefill)
    prefill = coworld[0].length
    source_steps = sum(p.length for p in coworld if p.kind in ("prefill", "source"))
    # CoWorld's world-model warm-up updates become full finetuning updates: the same target updates in all
    warmup = sum(p.length for p in coworld if p.kind == "target_wm")
    target = [p for p in coworld if p.kind == "target"]
    head = [Phase("target", warmup, evaluate=True, cost=target[0].cost)] if warmup and target else []
    return [Phase("prefill", prefill, source=0), Phase("source", source_steps - prefill, source=0)] + head + [
        Phase("target", p.length, evaluate=True, cost=p.cost) for p in target
    ]


def pad_actions(batch: dict, dim: int) -> dict:
    """Zero-pad a batch's actions (B, L, A) to ``dim`` dims (DV2 Finetune's shared action space)."""
    a = batch["action"]
    if a.shape[-1] == dim:
        return batch
    return {**batch, "action": torch.nn.functional.pad(a, (0, dim - a.shape[-1]))}


class ActionSlice:
    """Acts with an agent whose action space is larger than the env's: keeps the first ``dim`` dims."""

    def __init__(self, agent, dim: int):
        self.agent, self.action_dim = agent, dim

    @property
    def updates(self) -> int:
        return self.agent.updates

    def initial_policy_state(self, n: int):
        return self.agent.initial_policy_state(n)

    @property
    def value_gamma(self) -> float | None:
        """The wrapped agent's critic discount (``coworld.run.train.value_discount``)."""
        return getattr(self.agent, "value_gamma", None)

    def policy_value(self, state):
        return self.agent.policy_value(state)

    def act(self, obs, state, is_first, explore):
        action, state = self.agent.act(obs, state, is_first, explore)
        return action[:, : self.action_dim], state


def source_config(cfg: Config) -> Config:
    """The config the source simulators are made with: ``coworld.source_options`` over ``env.options``."""
    if not cfg.coworld.source_options:
        return cfg
    out = copy.deepcopy(cfg)
    out.env.options = {**cfg.env.options, **cfg.coworld.source_options}
    return out


def state_source(cfg: Config) -> bool:
    """Whether the sources read the low-dimensional state (``coworld.source_options = {obs = "state"}``)."""
    return source_config(cfg).env.options.get("obs", "image") == "state"


class SourceWorker:
    """One source simulator: its agent, online replay (on disk) and collector. With a state-input
    source (:func:`state_source`) the agent is a :class:`StateSourceAgent` and the replay samples ``state``."""

    def __init__(self, index: int, env_id: str, cfg: Config, run_dir: Path, device, target_dim: int,
                 agent_dim: int | None = None, agent_cls=DreamerAgent):
        self.env_id = env_id
        self.env = make_env(source_config(cfg), env_id)
        self.action_dim = envs.spec(env_id).action_dim
        self.state_dim = int(self.env.observation_space["state"].shape[0]) if state_source(cfg) else 0
        if self.state_dim:
            self.agent = StateSourceAgent(cfg, agent_dim or self.action_dim, self.state_dim, device=device)
        else:
            self.agent = agent_cls(cfg, agent_dim or self.action_dim, device=device)
        self.policy = ActionSlice(self.agent, self.action_dim) if agent_dim else self.agent
        self.replay = Replay(run_dir / f"replay-source{index}", seed=cfg.seed + 101 * (index + 1), readonly=False,
                             extra_keys=("state",) if self.state_dim else ())
        self.collector = Collector(self.env, self.replay, seed=cfg.seed + 1000 * (index + 1),
                                   action_dim=self.action_dim)
        self.adapter = ActionAdapter(self.action_dim, target_dim, cfg.coworld.action_adapter)
        self.episode_steps = cfg.env.time_limit or envs.spec(env_id).time_limit

    def components(self, i: int) -> dict:
        return {f"source{i}_agent": self.agent, f"source{i}_replay": self.replay,
                f"source{i}_collector": self.collector}


def dataset_state_dim(directory) -> int:
    """Size of the ``state`` key of a dataset's first episode (0 when it has none)."""
    from coworld.data.episodes import list_episode_files, load_episode

    files = list_episode_files(directory) if Path(directory).is_dir() else []
    if not files:
        return 0
    state = load_episode(files[0]).get("state")
    return int(state.shape[-1]) if state is not None and state.ndim == 2 else 0


class CoWorldTrainer(BaseTrainer):
    """CoWorld (``finetune=False``) or DV2 Finetune (``finetune=True``, one source; ``ewc=True``: with
    the EWC penalty, docs/algorithms.md#dv2-finetune-ewc)."""

    finetune_agent = DreamerAgent  # the one agent of the finetuning baselines (LOMPO Finetune: LompoAgent)

    def __init__(self, session: Session, source_ids: list[str], target_dataset: str, target_env: str | None,
                 finetune: bool = False, ewc: bool = False):
        self.session = session
        self.finetune = finetune
        cfg = self.cfg = session.cfg
        device = session.device
        if finetune and cfg.coworld.target_ensemble:
            raise UserError("coworld.target_ensemble makes CoWorld's target pessimistic; DV2 Finetune has no separate "
                            "target agent. Use --algo offline-dv2 for a pessimistic offline baseline")
        self.notes = []  # stages switched off for a state-input source, logged when the run begins
        self.stage_a = self.stage_b = True
        self.target_states = False  # the target batches carry `state` (read by state-input sources)
        if state_source(cfg):
            self.target_states = self.plan_state_source(source_ids, target_dataset, finetune)
        self.target_replay = Replay(target_dataset, seed=cfg.seed + 17,
                                    extra_keys=("state",) if self.target_states else ())
        # image size and (with a target env) action dimension, before the source prefill
        self.target_dim = check_dataset(self.target_replay, cfg, target_env)
        if finetune:  # one agent, pretrained in the source then finetuned: actions padded to the larger space
            self.joint_dim = max(self.target_dim, envs.spec(source_ids[0]).action_dim)
            self.sources = [SourceWorker(0, source_ids[0], cfg, session.dir, device, self.target_dim,
                                         agent_dim=self.joint_dim, agent_cls=self.finetune_agent)]
            self.target = self.sources[0].agent
            self.policy = ActionSlice(self.target, self.target_dim)
            self.schedule = finetune_schedule(cfg, session.total, self.min_prefill())
        else:
            self.target = self.policy = target_agent(cfg, self.target_dim, device)
            self.sources = [SourceWorker(i, sid, cfg, session.dir, device, self.target_dim)
                            for i, sid in enumerate(source_ids)]
            self.schedule = build_schedule(cfg, session.total, len(self.sources), self.min_prefill())
        self.ewc = None
        if ewc:
            if cfg.train.amp == "fp16":
                raise UserError("dv2-finetune-ewc adds the actor's penalty through the critic's fp16 loss scale; "
                                "use --set train.amp=none or bf16")
            if cfg.coworld.ewc_batches < 1:
                raise UserError(f"coworld.ewc_batches must be >= 1 (source batches for the Fisher); "
                                f"got {cfg.coworld.ewc_batches}")
            if cfg.coworld.ewc_lambda < 0:
                raise UserError(f"coworld.ewc_lambda must be >= 0 (a negative weight pushes the weights away from "
                                f"the pretrained ones); got {cfg.coworld.ewc_lambda}")
            self.ewc = EWC()
        self.finish_setup(target_env)

    def finish_setup(self, target_env: str | None) -> None:
        """What every trainer on this schedule sets once its agents, sources and schedule exist: eta's
        decay length, the evaluation env, the progress total, the counters, the checkpointed parts."""
        # eta's linear decay runs over the source steps of the reward-alignment stage
        self.align_steps = sum(p.length for p in self.schedule if p.kind == "source" and p.align)
        self.eval_env = make_eval_envs(self.cfg, target_env) if target_env else None
        self.total_units = sum(p.length * p.cost for p in self.schedule)
        self.session.total = self.total_units
        self.counters = {"phase": 0, "done": 0, "units": 0, "selected": 0, "target_updates": 0, "evals": 0,
                         "pretrained": [False] * len(self.sources), "aligned": 0, "last_eval": 0,
                         "phase_updates": [0] * len(self.schedule)}
        self.components = self.checkpointed()
        self.tag, self.step_metrics = "target/", None

    def plan_state_source(self, source_ids: list[str], target_dataset: str, finetune: bool) -> bool:
        """Which stages a state-input source can serve (docs/algorithms.md#state-input-source); returns
        whether the target batches must carry the dataset's recorded states (stages A, B)."""
        cfg = self.cfg
        if finetune:
            raise UserError("the finetuning baselines (DV2 Finetune, DV2 Finetune + EWC, LOMPO Finetune) cannot use "
                            "a state-input source: one agent is pretrained "
                            "on states and finetuned on images, so no part of its encoder or decoder transfers "
                            "(the paper reports it only for CoWorld); drop coworld.source_options.obs=state")
        dims = set()
        for sid in source_ids:  # (the sources' envs are made later; this one only tells the state size)
            env = envs.make(sid, **source_config(cfg).env.options)
            dims.add(int(env.observation_space["state"].shape[0]))
            env.close()
        have = dataset_state_dim(target_dataset)
        why = None
        if not cfg.coworld.target_states:
            why = "coworld.target_states is false"
        elif not have:
            why = "the target dataset has no 'state' key"
        elif dims != {have}:
            why = f"the target dataset's states have {have} dims, the sources' {sorted(dims)}"
        if why is None:
            self.notes.append(f"[state source] stages A and B read the target dataset's recorded states "
                              f"({have} dims; training only, the target policy reads images); stage C unchanged")
            return True
        if len(source_ids) > 1:
            raise UserError(f"several state-input sources need the target dataset's states to choose between "
                            f"them ({why}); give one --source")
        self.stage_a = self.stage_b = False
        self.notes.append(f"[state source] stages A and B are OFF: {why}, so the source model cannot read target "
                          "data; stage C runs on unaligned latents, as in the paper's 'w/o A' ablation")
        return False

    def min_prefill(self) -> int:
        """One episode of the longest source plus one batch window, so warm-up trains at once."""
        return max(s.episode_steps for s in self.sources) + self.cfg.train.length

    def checkpointed(self) -> dict:
        comps = {"target_replay": self.target_replay}
        for i, src in enumerate(self.sources):
            comps.update(src.components(i))
        if not self.finetune:
            comps["target_agent"] = self.target
        if self.ewc is not None:
            comps["ewc"] = self.ewc
        return comps

    # -- the pieces of work ------------------------------------------------------------------
    def sample_target(self) -> dict:
        t = self.cfg.train
        return self.target_replay.sample(t.batch, t.length, device=self.session.device, mode=t.sampling)

    def select(self, units: int) -> None:
        if len(self.sources) > 1:
            batch = self.sample_target()
            agents = [s.agent for s in self.sources]
            dist = domain_distances(self.target, agents, batch["image"], [batch[a.wm.obs_key] for a in agents])
            self.counters["selected"] = select_source(dist)
            values = {f"domain_kl/source{i}": float(d) for i, d in enumerate(dist)}
            self.session.logger.scalars(units, {**values, "selected_source": self.counters["selected"]},
                                        prefix="coworld/")
            self.session.logger.write(
                "[select] " + ", ".join(f"{s.env_id}: {float(d):.4f}" for s, d in zip(self.sources, dist))
                + f" -> {self.sources[self.counters['selected']].env_id}")

    def source_step(self, i: int, phase: Phase) -> dict:
        src, t = self.sources[i], self.cfg.train
        agent = None if phase.kind == "prefill" else src.policy
        episode = src.collector.step(agent, noise=t.expl_noise)
        if episode:
            self.session.logger.scalars(self.counters["units"], episode, prefix=f"source{i}/episode/")
        ready = phase.kind != "prefill" and src.replay.num_episodes > 0
        pretrained = self.counters["pretrained"]
        n, pretrained[i] = updates_due(t, src.collector.steps, ready, pretrained[i])
        metrics = {}
        for _ in range(n):
            metrics = self.source_update(src, phase.align)
        if phase.align:
            self.counters["aligned"] += 1
        return metrics

    def source_update(self, src: SourceWorker, align: bool) -> dict:
        t = self.cfg.train
        hook = None
        if align and self.stage_b:
            eta = eta_at(self.counters["aligned"] / max(self.align_steps - 1, 1), self.cfg)
            hook = reward_alignment_hook(src.agent, self.sample_target(), eta, self.cfg, src.adapter)
        batch = src.replay.sample(t.batch, t.length, device=self.session.device, mode=t.sampling)
        if self.finetune:
            batch = pad_actions(batch, self.joint_dim)
        return src.agent.update(batch, wm_hook=hook)  # stage B on the source world model

    def target_update(self, wm_only: bool) -> dict:
        self.counters["target_updates"] += 1
        if self.finetune:
            hooks = self.ewc_hooks() if self.ewc is not None else (None, None)
            return self.target.update(pad_actions(self.sample_target(), self.joint_dim), *hooks)
        src = self.sources[self.counters["selected"]].agent
        batch = self.sample_target()
        # stage A on the target world model (a state-input source embeds the batch's recorded states)
        align = state_alignment_hook(src, self.cfg, batch.get("state") if src.wm.obs_key == "state" else None) \
            if self.stage_a else None
        if wm_only:
            return self.target.world_model_step(batch, extra_loss=align)[1]
        return self.target.update(batch, wm_hook=align, critic_hook=value_constraint_hook(src, self.cfg))

    def ewc_hooks(self):
        """DV2 Finetune + EWC: the penalty hooks; theta* and F are taken at the first target update
        (the end of source pretraining) and kept in the checkpoint, so a resumed run reuses them."""
        if not self.ewc.ready:
            src, t = self.sources[0], self.cfg.train
            sample = lambda: pad_actions(  # noqa: E731
                src.replay.sample(t.batch, t.length, device=self.session.device, mode=t.sampling), self.joint_dim)
            stats = self.ewc.compute(self.target, sample, self.cfg.coworld.ewc_batches)
            self.session.logger.scalars(self.counters["units"], stats)
            self.session.logger.write(f"[ewc] Fisher from {self.ewc.batches} source batches: "
                                      + ", ".join(f"{k.split('_')[-1]} {v:.3g}" for k, v in stats.items()))
        return ewc_hooks(self.target, self.ewc, self.cfg.coworld.ewc_lambda)

    def evaluation_due(self) -> bool:
        """Before a target block: at the first one, then once ``train.eval_every`` progress units
        have passed since the last evaluation (a target update counts train_every units, so
        coworld-official's 10,000 is every 2,000 updates: every block, as released). The number of
        evaluations thus scales with the run instead of being one per block at any --steps."""
        c = self.counters
        if c["evals"] == 0 or c["units"] - c["last_eval"] >= self.cfg.train.eval_every:
            c["last_eval"] = c["units"]
            return True
        return False

    def evaluate_target(self) -> None:
        """Evaluate the target policy in the target env, if there is one, and log the offline
        diagnostics on the target dataset; logged against the number of target updates so far."""
        step = self.counters["target_updates"]
        self.counters["evals"] += 1
        if self.eval_env is not None:
            run_evaluation(self.session, self.policy, self.eval_env, step, tag="target_eval",
                           index=self.counters["evals"])
        if not self.finetune:  # (DV2 Finetune's model reads padded actions: no diagnostics on raw data)
            log_openloop(self.session, self.target, self.target_replay, step, prefix="target_")

    # -- the Trainer of coworld.run.loop: position in progress units, one schedule step per call ------
    def position(self) -> int:
        return self.counters["units"]

    def begin(self) -> None:
        for note in self.notes:
            self.session.logger.write(note)
        self.write_schedule()

    def step(self) -> dict | None:
        c = self.counters
        phase = self.schedule[c["phase"]]
        if c["done"] == 0:
            if phase.select:
                self.select(c["units"])
            if phase.evaluate and self.evaluation_due():
                self.evaluate_target()
        if phase.kind in ("prefill", "source"):
            i = phase.source if phase.source >= 0 else c["selected"]
            updates_before = self.sources[i].agent.updates
            metrics = self.source_step(i, phase)
            c["phase_updates"][c["phase"]] += self.sources[i].agent.updates - updates_before
            self.tag = f"source{i}/"
        else:
            metrics = self.target_update(wm_only=phase.kind == "target_wm")
            c["phase_updates"][c["phase"]] += 1
            self.tag = "target/"
        if metrics:
            self.session.watch(metrics)  # NaN/inf stops the run cleanly (docs/reliability.md)
        self.step_metrics = metrics
        c["done"] += 1
        c["units"] += phase.cost
        if c["done"] == phase.length:
            c["phase"], c["done"] = c["phase"] + 1, 0
        return metrics

    # (no periodic evaluate: evaluations come before target blocks, in step, and at the end, in final)
    def log(self, position: int, metrics: dict) -> None:
        # training metrics are logged only by a step that made an update, under that update's agent
        if self.step_metrics:
            self.session.logger.scalars(position, {**self.step_metrics, "phase": self.counters["phase"]},
                                        prefix=self.tag)

    def final(self) -> None:
        self.evaluate_target()
        self.write_schedule()

    def run(self) -> int:
        return run_loop(self.session, self)

    def write_schedule(self) -> None:
        """schedule.json: the phases, with the gradient updates each has made so far."""
        rows = [{**asdict(p), "updates": n} for p, n in zip(self.schedule, self.counters["phase_updates"])]
        (self.session.dir / "schedule.json").write_text(json.dumps(rows, indent=1))


# -- evaluation of a saved run (`coworld eval`, coworld.evaluate) -------------------------------------


def evaluation_agent(run_args: dict, cfg: Config, state: dict):
    """(policy acting in the target env, target env id) of a saved CoWorld / DV2 Finetune run."""
    if run_args["algo"] in ("dv2-finetune", "dv2-finetune-ewc"):
        dims = state["dims"]
        agent = DreamerAgent(cfg, dims["source0_agent"])
        agent.load_checkpoint_state(state["source0_agent"])
        return ActionSlice(agent, dims["target_replay"]), run_args["target_env"]
    agent = target_agent(cfg, state["dims"]["target_agent"])
    agent.load_checkpoint_state(state["target_agent"])
    return agent, run_args["target_env"]


def target_agent(cfg: Config, action_dim: int, device="cpu") -> DreamerAgent:
    """CoWorld's target agent: the paper's DreamerV2, or with ``coworld.target_ensemble`` = K an Offline DV2
    agent (K prior heads, reward penalty ``coworld.target_penalty``; docs/algorithms.md#pessimistic-target)."""
    c = cfg.coworld
    if not c.target_ensemble:
        return DreamerAgent(cfg, action_dim, device=device)
    cfg = replace(cfg, model=replace(cfg.model, ensemble=c.target_ensemble),
                  train=replace(cfg.train, offline_penalty=c.target_penalty))
    return OfflineDV2Agent(cfg, action_dim, device=device)
