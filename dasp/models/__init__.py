from dasp.models.bisenetv1 import BiSeNetV1
from dasp.models.layers import ConvBNReLU
from dasp.models.spatial_path import (DASPStage, DepthwiseAttentionSpatialPath, PaperSpatialPath,
                                      PoolingPointwise, SpatialPath)

__all__ = ["BiSeNetV1", "ConvBNReLU", "DASPStage", "DepthwiseAttentionSpatialPath",
           "PaperSpatialPath", "PoolingPointwise", "SpatialPath"]
