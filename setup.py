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
    package_data={"serving": ["templates/*.html"], "components": ["eval_report/templates/*.html"]},
    py_modules=["local_runner", "kubeflow_runner", "kubeflow_v2_runner"],
    install_requires=[
        "tfx[kfp]==1.15.1",
        "dill>=0.3.1.1,<0.3.2",
        "pillow>=10",
        "numpy<2",
        "scipy",
        "matplotlib>=3.10,<3.11",  # the evaluation report's charts (Agg, no display)
        "flask>=3.1,<3.2",  # serving/web.py, the pathologist's page
        "waitress>=3,<4",  # its WSGI server
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-timeout",
            "ruff",
            "scikit-image",
            "scikit-learn",
            "selenium>=4.30,<5",  # drives Debian's chromium in tests/test_web_browser.py
            "gcp-storage-emulator",  # GCS on 127.0.0.1 for tests/test_object_store.py
        ],
    },
    entry_points={
        "console_scripts": [
            "histo-preprocess=preprocessing.cli:main",
            "histo-demo-data=demo.generate:main",
            "histo-predict=serving.predict:main",
            "histo-validate=serving.validate:main",
            "histo-web=serving.web:main",
        ]
    },
)
