"""Installable package: the pipeline, its components and module files, the preprocessing job.

Exact versions live in requirements/constraints.txt (``pip install -c``); here are the
direct dependencies with the ranges the code needs.
"""

from setuptools import find_packages, setup

setup(
    name="histopath-tfx",
    version="0.1.0",
    description="TFX pipeline that trains, validates and ships a breast histopathology classifier",
    python_requires=">=3.10,<3.11",
    packages=find_packages(
        include=[
            f"{package}{suffix}"
            for package in (
                "pipeline",
                "components",
                "modules",
                "preprocessing",
                "demo",
                "kfp_tools",
                "serving",
            )
            for suffix in ("", ".*")
        ]
    ),
    py_modules=["local_runner", "kubeflow_runner", "kubeflow_v2_runner"],
    install_requires=[
        "tfx[kfp]==1.15.1",
        "dill>=0.3.1.1,<0.3.2",
        "pillow>=10",
        "numpy<2",
        "scipy",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout", "ruff", "scikit-image", "scikit-learn"],
    },
    entry_points={
        "console_scripts": [
            "histo-preprocess=preprocessing.cli:main",
            "histo-demo-data=demo.generate:main",
        ]
    },
)
