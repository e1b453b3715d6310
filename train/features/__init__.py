"""Full-image features and linear SVMs (paper Sec. 3.2-3.3): extraction into HDF5 caches,
the SVM stage and the crop/warp/full comparison."""
