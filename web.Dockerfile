# The pathologist's page (serving/web.py) on its own, small image: with --url it asks TF
# Serving and never imports TensorFlow, so it needs Flask, waitress, Pillow and NumPy only
# (tests/test_web_image.py checks that list against what the page imports). Build from the
# repository root:
#   docker build -f web.Dockerfile -t REGISTRY/histopath-web:TAG . && docker push ...
# Not built in this repository's tests (no Docker engine); tests only read this file.
FROM python:3.10-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
RUN python -m pip install -c requirements/constraints.txt flask waitress pillow "numpy<2"
# The project's own packages without their pipeline dependencies (TFX, TensorFlow).
COPY . /src
RUN python -m pip install --no-deps . \
 && python -c "import serving.web" \
 && rm -rf /src

USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["histo-web", "--host=0.0.0.0", "--port=8080"]
