"""UniMed: one 3D model for classification, detection and segmentation of CT and MR volumes."""

from setuptools import find_packages, setup

setup(
    name="unimed_core",
    version="0.1.0",
    description="UniMed: universal 3D medical image model with decomposed and composed decoders",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["unimed_core", "unimed_core.*"]),
    install_requires=[
        "torch>=2.4",
        "monai[nibabel,pynrrd,scipy,tqdm,pyyaml,fire,tensorboard,psutil,jsonschema,ignite]>=1.5",
        "numpy>=1.26",
        "scipy>=1.11",
        "nibabel>=5",
        "pynrrd>=1.0",
        "SimpleITK>=2.3",
        "pydicom>=3",
        "highdicom>=0.23",
        # pydicom's decoder plugins for compressed DICOM: JPEG baseline/lossless and JPEG-LS (libjpeg), JPEG 2000
        # (openjpeg); JPEG-LS also through pyjpegls (highdicom's), RLE through pydicom itself
        "pylibjpeg>=2",
        "pylibjpeg-libjpeg>=2.1",
        "pylibjpeg-openjpeg>=2.3",
        "slicerio>=1.0",
        "scikit-learn>=1.3",
        "einops>=0.7",  # MONAI's SwinTransformer (the base variant's encoder) needs it
    ],
    extras_require={
        # imagecodecs: the tests write JPEG baseline and lossless DICOM (pydicom has no encoder for them)
        "dev": ["pytest>=8", "hypothesis>=6", "ruff>=0.5", "imagecodecs"],
        "bench": ["torchvision", "matplotlib"],
        "slicer": ["slicer-core"],
        # real anatomy for semi-synthetic studies: nilearn ships the MNI152 template and masks in its wheel
        "semisynthetic": ["nilearn"],
    },
    entry_points={
        "console_scripts": [
            "unimed-make-synthetic=unimed_core.synthetic.dataset:main",
            "unimed-make-semisynthetic=unimed_core.synthetic.semi_synthetic:main",
            "unimed-infer=unimed_core.cli.infer:main",
            "unimed-prepare-dataset=unimed_core.cli.prepare_dataset:main",
        ]
    },
)
