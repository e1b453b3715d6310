"""GPU bodies of the index-heavy hot loops, written with numba.cuda: max pooling (maxpool),
LRN (lrn), SPP and WindowSPP in one launch (spp), im2col / col2im (im2col). Each module
mirrors its CPU twin in minispp/kernels/cpu/ (same arguments, same layouts, same tie rules)
and exposes plain launchers that take CuPy arrays (through __cuda_array_interface__, on
CuPy's current stream) or, under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), NumPy
arrays. Importing them touches no device. Submodules are not imported here, so importing
this package does not import numba.cuda."""
