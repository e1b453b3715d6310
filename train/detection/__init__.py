"""The SPP-net detector (paper Sec. 4): windows and conv5 features, fine-tuning, SVMs and
box regression, testing, timing against the R-CNN way, and pictures."""
