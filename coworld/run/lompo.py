"""LOMPO Finetune (docs/algorithms.md#lompo-finetune): one LOMPO agent trained online in the source
simulator, then on the offline target data, on DV2 Finetune's schedule and budget.

It is DV2 Finetune's trainer (:class:`coworld.run.cotrain.CoWorldTrainer` with ``finetune=True``:
:func:`~coworld.run.cotrain.finetune_schedule`, the source :class:`~coworld.run.driver.Collector`
and replay, actions zero-padded to the joint space by ``pad_actions``, ``ActionSlice`` in the envs)
with a :class:`~coworld.algos.lompo.LompoAgent` in place of the DreamerV2 agent. ``--steps`` counts
source environment steps; the target updates are those CoWorld and DV2 Finetune make for the same
``--steps``.
"""

from __future__ import annotations

from coworld.algos.lompo import LompoAgent
from coworld.config import Config
from coworld.run.cotrain import ActionSlice, CoWorldTrainer
from coworld.run.session import Session


class LompoFinetuneTrainer(CoWorldTrainer):
    finetune_agent = LompoAgent


def train_lompo_finetune(session: Session, inputs: dict) -> int:
    return LompoFinetuneTrainer(session, inputs["source"], inputs["target_dataset"], inputs.get("target_env"),
                                finetune=True).run()


def evaluation_agent(run_args: dict, cfg: Config, state: dict):
    """(policy acting in the target env, target env id) of a saved LOMPO Finetune run."""
    dims = state["dims"]
    agent = LompoAgent(cfg, dims["source0_agent"])
    agent.load_checkpoint_state(state["source0_agent"])
    return ActionSlice(agent, dims["target_replay"]), run_args["target_env"]
