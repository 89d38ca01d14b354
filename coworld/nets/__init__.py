"""Networks: the DreamerV2 world model (encoder, RSSM, decoder, heads), actor and critic."""

from coworld.nets.actor_critic import Actor, Critic
from coworld.nets.world_model import RSSM, Decoder, Encoder, GRUCell, WorldModel, glorot_init, preprocess

__all__ = ["Actor", "Critic", "Decoder", "Encoder", "GRUCell", "RSSM", "WorldModel", "glorot_init", "preprocess"]
