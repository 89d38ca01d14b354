"""coworld: CoWorld (NeurIPS 2024) and its DreamerV2 baselines for offline visual RL.

    import coworld
    coworld.train("offline-dv2", "runs/odv2", 5000, dataset="data/reach-mr", env="builtin:reach")
    coworld.evaluate("runs/odv2", episodes=10)

``train`` and ``evaluate`` are :func:`coworld.run.api.train` and :func:`coworld.run.api.evaluate`,
loaded on first use (importing ``coworld`` stays cheap).
"""

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "__version__"]


def __getattr__(name: str):
    if name in ("train", "evaluate"):
        from coworld.run import api

        return getattr(api, name)
    raise AttributeError(f"module 'coworld' has no attribute {name!r}")
