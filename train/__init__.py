"""Pipelines built on minispp, layers and nets: classification training (single- and
multi-size), evaluation views, full-image features with SVMs, and the detector. The
command line lives here too. (Filled by the pipeline issues; the core needs none of it.)"""
