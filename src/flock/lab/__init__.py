"""flock's local lab: a BGP fabric in network namespaces, with real BIRD, real agents,
the real CNI plugin and an emulated Kubernetes API (kmock). ``flock lab up|run|down``."""
