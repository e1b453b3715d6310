"""Boxes (IoU, NMS, box regression), region proposals and selective search: the parts of
the detector (paper Sec. 4) that are not networks."""
