"""Data layer: the episode format (.npz + dataset.json), validation, replay and sampling, dataset making.

See docs/datasets.md.
"""

from coworld.data.episodes import (
    DatasetError,
    EpisodeBuilder,
    episode_name,
    load_episode,
    read_sidecar,
    save_episode,
    update_sidecar,
    write_sidecar,
)

__all__ = [
    "DatasetError",
    "EpisodeBuilder",
    "episode_name",
    "load_episode",
    "read_sidecar",
    "save_episode",
    "update_sidecar",
    "write_sidecar",
]
