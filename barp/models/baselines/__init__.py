"""The comparison methods barp trains: offline full-information routers and classic contextual bandits.

Each is a :class:`~barp.models.base.RouterModule`. Importing this package registers their classes for bare class
names in YAML configs (``class_path: KNNRouter``).
"""

from barp.models.baselines.bandits import (
    EpsilonGreedyRouter,
    LinearBanditModule,
    LinearTSRouter,
    LinUCBRouter,
)
from barp.models.baselines.graphrouter import GraphRouter
from barp.models.baselines.mf import MFRouter
from barp.models.baselines.offline import (
    KNNRouter,
    MLPRouter,
    OfflineRouterModule,
    full_information_training_data,
)
from barp.models.baselines.routerdc import RouterDC

__all__ = [
    "EpsilonGreedyRouter",
    "GraphRouter",
    "KNNRouter",
    "LinUCBRouter",
    "LinearBanditModule",
    "LinearTSRouter",
    "MFRouter",
    "MLPRouter",
    "OfflineRouterModule",
    "RouterDC",
    "full_information_training_data",
]
