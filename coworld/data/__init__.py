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
from coworld.data.make import LEVELS, make_dataset
from coworld.data.replay import Replay
from coworld.data.validate import Problem, validate_directory, validate_episode

__all__ = [
    "LEVELS",
    "DatasetError",
    "EpisodeBuilder",
    "Problem",
    "Replay",
    "episode_name",
    "load_episode",
    "make_dataset",
    "read_sidecar",
    "save_episode",
    "update_sidecar",
    "validate_directory",
    "validate_episode",
    "write_sidecar",
]
