"""ernjax: recurrence vs radiation necrosis from routine MRI, in JAX/Flax.

Versions are pinned to what was tested on CPython 3.11 (the newest JAX for 3.11 is 0.10.2).
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "grain==0.2.18",
    "nibabel==5.4.2",
    "simpleitk==2.5.7",
    "nilearn==0.14.1",
    "ml-collections==1.1.0",
    "tensorboardX==2.6.5",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    # WhiteStripe (config.data.normalize="whitestripe"), the field's maintained implementation;
    # scikit-fuzzy is its one dependency that ernjax lacked (pure Python; no version above moves)
    "intensity-normalization==3.0.1",
    "scikit-fuzzy==0.5.0",
    "scikit-image==0.26.0",  # marching cubes / squares for the radiomics shape features
    "numpy==2.4.6",
    "absl-py==2.5.1",
    "etils==1.15.0",
    "matplotlib==3.11.2",
    "pandas==3.1.1",
    "pydicom==3.0.2",
    "dcm2niix==1.0.20260724",  # DICOM -> NIfTI (its binary ships in the wheel)
]

BEAM = ["apache-beam==2.77.0"]

EXTRAS_REQUIRE = {
    # statsmodels: a reference the tests check stats against (Holm), never imported at run time.
    # Beam too, so that tests/test_beam_build.py runs the DirectRunner build (it resolves with
    # every pin above unchanged).
    "test": ["pytest==9.2.0", "ruff==0.17.6", "statsmodels==0.15.0", *BEAM],
    # JAX with its CUDA 12 wheels (see README: "GPUs").
    "cuda": ["jax[cuda12]==0.10.2"],
    # Parity tests and peer benchmarks: the CPU build of PyTorch that this machine ships, and MONAI.
    "torch": ["torch==2.13.0", "monai==1.6.1"],
    # The TensorBoard server, to review WORKDIR/tensorboard (launch/tensorboard.sh); no TensorFlow.
    "tensorboard": ["tensorboard==2.21.0"],
    # The records build on an Apache Beam runner (README: "Building the records on a cluster").
    "beam": BEAM,
}

setup(
    name="ernjax",
    version="0.1.0",
    description="Glioma recurrence vs radiation necrosis from multimodal MRI, in JAX/Flax",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["ernjax", "ernjax.*", "data_builders", "data_builders.*"]),
    package_data={"data_builders.ernjax_mri": ["README.md", "CITATIONS.bib", "dummy_data/**/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
