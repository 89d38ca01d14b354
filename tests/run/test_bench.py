import pytest

from coworld.config import load_config
from coworld.run.bench import bench, print_bench

SMALL = ["model.depth=4", "model.deter=16", "model.hidden=16", "model.stoch=4", "model.units=16",
         "behaviour.actor_units=16", "behaviour.critic_units=16", "behaviour.horizon=2"]


@pytest.mark.parametrize("extra", [[], ["model.ensemble=2"]])
def test_bench_reports_consistent_figures(extra, capsys):
    cfg = load_config("tiny", SMALL + extra)
    r = bench(cfg, batch=2, length=3, updates=2, warmup=1, device="cpu", amp="none", compile=False)
    assert r["agent"] == ("OfflineDV2Agent" if extra else "DreamerAgent")
    assert r["ms_total"] == pytest.approx(r["ms_world_model"] + r["ms_behaviour"])
    assert r["updates_per_s"] == pytest.approx(1e3 / r["ms_total"])
    assert r["flops_total"] == r["flops_world_model"] + r["flops_behaviour"] > 0
    assert r["fraction_of_matmul_peak"] == pytest.approx(
        r["flops_total"] / (r["ms_total"] / 1e3) / r["matmul_flops_per_s"])
    assert r["peak_memory_bytes"] > 0 and r["batch"] == 2 and r["length"] == 3
    print_bench(r)
    assert "updates/s" in capsys.readouterr().out
