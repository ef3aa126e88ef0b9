"""BiSeNet V1 with the original or the Depthwise Attention Spatial Path, and its tools."""
__version__ = "0.1.0"
