import pytest
import torch

from coworld.config import load_config
from coworld.errors import UserError
from coworld.run.bench import KINDS, bench, kinds_from_env, print_bench

SMALL = ["model.depth=4", "model.deter=16", "model.hidden=16", "model.stoch=4", "model.units=16",
         "behaviour.actor_units=16", "behaviour.critic_units=16", "behaviour.horizon=2"]


@pytest.mark.parametrize("extra,kinds", [([], KINDS), (["model.ensemble=2"], ("source",))])
def test_bench_reports_consistent_figures(extra, kinds, capsys):
    cfg = load_config("tiny", SMALL + extra)
    torch.set_num_threads(2)  # not what bench must choose (below)
    r = bench(cfg, batch=2, length=3, updates=2, warmup=1, device="cpu", amp="none", compile=False, kinds=kinds)
    assert r["agent"] == ("OfflineDV2Agent" if extra else "DreamerAgent")
    assert list(r["kinds"]) == list(kinds) and r["kind"] == kinds[0]
    for k in r["kinds"].values():
        assert k["ms_total"] == pytest.approx(k["ms_world_model"] + k["ms_behaviour"])
        assert k["updates_per_s"] == pytest.approx(1e3 / k["ms_total"])
        assert k["flops_total"] == k["flops_world_model"] + k["flops_behaviour"] > 0
        assert k["fraction_of_matmul_peak"] == pytest.approx(
            k["flops_total"] / (k["ms_total"] / 1e3) / k["matmul_flops_per_s"])
        assert k["peak_memory_bytes"] > 0 and k["first_update_s"] > 0
    assert r["batch"] == 2 and r["length"] == 3
    # train.threads = 0 (the preset's): the free cores, as a run resolves it; the conftest makes every
    # other core look busy, so one thread
    assert cfg.train.threads == 0 and r["threads"] == 1
    if len(kinds) == 3:  # stage B runs the source model over a second batch: more world-model FLOPs
        assert r["kinds"]["align"]["flops_world_model"] > r["kinds"]["source"]["flops_world_model"]
        assert r["kinds"]["target"]["flops_world_model"] > r["kinds"]["source"]["flops_world_model"]
    print_bench(r)
    out = capsys.readouterr().out
    assert out.count("updates/s") == len(kinds)


def test_bench_kinds_from_environment(monkeypatch):
    monkeypatch.delenv("COWORLD_BENCH_KINDS", raising=False)
    assert kinds_from_env() == KINDS
    monkeypatch.setenv("COWORLD_BENCH_KINDS", "target, align")
    assert kinds_from_env() == ("target", "align")
    monkeypatch.setenv("COWORLD_BENCH_KINDS", "sauce")
    with pytest.raises(UserError, match="sauce"):
        kinds_from_env()
