"""Comparison policies behind one interface (:class:`~barp.routers.base.Router`), so evaluation treats BaRP and the
baselines alike: reference policies, offline full-information routers and classic contextual bandits.

Importing this package registers the trainable methods' classes for bare class names in YAML configs.
"""

from barp.routers.bandits import EpsilonGreedyRouter, LinearBanditModule, LinearTSRouter, LinUCBRouter
from barp.routers.base import ModuleRouter, Outcomes, Router
from barp.routers.mf import MFRouter
from barp.routers.offline import KNNRouter, MLPRouter, OfflineRouterModule, full_information_training_data
from barp.routers.reference import OracleRouter, RandomRouter, SingleModelRouter, cheapest_and_most_expensive
from barp.routers.registry import METHOD_CLASSES, train_method

__all__ = [
    "METHOD_CLASSES",
    "EpsilonGreedyRouter",
    "KNNRouter",
    "LinUCBRouter",
    "LinearBanditModule",
    "LinearTSRouter",
    "MFRouter",
    "MLPRouter",
    "ModuleRouter",
    "OfflineRouterModule",
    "OracleRouter",
    "Outcomes",
    "RandomRouter",
    "Router",
    "SingleModelRouter",
    "cheapest_and_most_expensive",
    "full_information_training_data",
    "train_method",
]
