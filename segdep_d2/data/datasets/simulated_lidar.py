"""Depth completion on datasets with dense depth: a view whose records carry a simulated LiDAR scan as their
sparse input (``sparse_depth_simulation``, :func:`segdep_d2.data.sparse_depth.simulated_lidar_depth`)."""
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..sparse_depth import SPARSE_DEPTH_SIMULATIONS

__all__ = ["register_simulated_lidar"]


def register_simulated_lidar(name, source, simulation="lidar64"):
    """Register ``name``: the records of the registered dataset ``source`` (dense depth + ``intrinsics``, e.g.
    ``vkitti2_train``) that have depth, with ``sparse_depth_simulation: simulation``, read lazily; the metadata
    is ``source``'s (registered before). Returns ``name``."""
    if simulation not in SPARSE_DEPTH_SIMULATIONS:
        raise ValueError(f"simulation {simulation!r}; expected one of {SPARSE_DEPTH_SIMULATIONS}")

    def load():
        return [dict(r, sparse_depth_simulation=simulation) for r in DatasetCatalog.get(source)
                if "depth_file_name" in r]

    DatasetCatalog.register(name, load)
    meta = {k: v for k, v in MetadataCatalog.get(source).as_dict().items() if k != "name"}
    MetadataCatalog.get(name).set(**meta, sparse_depth_simulation=simulation, source_dataset=source)
    return name
