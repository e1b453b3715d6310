from setuptools import find_packages, setup

setup(
    name="minispp",
    version="0.1.0",
    description="SPP-net (He et al., TPAMI 2015) from scratch in NumPy/Numba, with "
                "hand-written forward and backward passes",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["minispp", "minispp.*", "layers", "nets", "train", "train.*"]),
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "h5py>=3.8",
        "pillow>=10.0",
        "tqdm>=4.60",
        "scikit-image>=0.21",
    ],
    entry_points={"console_scripts": ["minispp = train.cli:main"]},
    extras_require={
        # the CUDA 13 machines the GPU path targets (README, "The GPU path"): CuPy for the
        # arrays and cuBLAS, numba-cuda for the kernels of minispp/kernels/gpu, cuDNN and its
        # Frontend for the convolutions (1.20: its wheel needs no other package; 1.32 pulls in
        # the CUTLASS DSL)
        "gpu": ["cupy-cuda13x==14.2.0", "numba-cuda[cu13]==0.30.4", "nvidia-cudnn-cu13==9.28.1.4",
                "nvidia-cudnn-frontend==1.20.0"],
        "test": ["pytest>=7"],
        "plots": ["matplotlib>=3.6"],
        "mpi": ["mpi4py>=4.0", "mpich>=4.2"],      # mpiexec -n R (README, "Beyond one machine")
    },
)
