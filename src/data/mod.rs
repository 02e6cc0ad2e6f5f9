//! Datasets: IDX, NPZ, image folders and CIFAR-10 binaries; seeded splits, long-tailed
//! subsampling, augmentation and the dataset specs shared by the trainer and the CLI.
