"""nginx in front of servefiles, in one wing: the generated server block and its two modes,
accel and tree (config.py), the Content-Types nginx's static module sends (static_types.py),
and the published tree nginx serves hits from (tree.py).

The wing imports the cache; the cache never imports it (the tree follows the disk tier
through ``DiskCache.on_removed`` and ``DiskCache.holding``).
"""

from .config import ACCEL_LOCATION, TREE_LOCATION, NginxSettings, render

__all__ = ["ACCEL_LOCATION", "TREE_LOCATION", "NginxSettings", "render"]
