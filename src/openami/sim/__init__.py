"""Fleet simulator: the other side of the wire (DLMS meters, load shapes, grid, faults)."""
