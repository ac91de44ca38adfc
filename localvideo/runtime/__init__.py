"""Runtime: the model store, loaded-pipeline cache, memory strategies and the runner (torch imported lazily)."""
