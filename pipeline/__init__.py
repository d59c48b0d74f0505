"""The data side: task registry, datasets, trajectory recording, the zarr store and its loader."""
