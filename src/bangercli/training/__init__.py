"""`banger train`: the training loop, its log and curves, devices (CUDA, DataParallel, DDP)."""
