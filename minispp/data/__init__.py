"""Data sets in the layouts users have (docs/design.md, "Data set layouts"): class folders,
the Pascal VOC devkit, Caltech101 and the embedded sets; image decoding, the paper's
transforms and the batch loader."""
