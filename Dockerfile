# CPU worker / launcher image for Flink, Spark or Dataflow (`--sdk_container_image`); GPU workers: Dockerfile.gpu.
# Beam here must equal the launcher's (a worker on another Beam version fails at job start, or worse,
# mid-job): BEAM_VERSION is the SDK image tag and the apache-beam pin; tests/packaging/test_images.py checks
# it against the installed apache-beam, PY_VERSION against pyproject's requires-python, torch against the
# `local` extra.   docker build -t polycap:0.1.0 .
ARG BEAM_VERSION=2.77.0
ARG PY_VERSION=3.11
FROM apache/beam_python${PY_VERSION}_sdk:${BEAM_VERSION}
ARG BEAM_VERSION
WORKDIR /opt/polycap
COPY pyproject.toml setup.py README.md LICENSE ./
COPY polycap polycap
COPY pipelines pipelines
COPY transforms transforms
COPY schemas schemas
COPY sharding sharding
COPY prompts prompts
COPY trainer trainer
COPY configs configs
ARG EXTRAS=ocr,gcs,s3
# Korean / Vietnamese OCR (transforms/backends/ocr_script.py): Tesseract's kor, Hangul (script), vie and eng LSTM models
RUN apt-get update && apt-get install -y --no-install-recommends tesseract-ocr-kor tesseract-ocr-script-hang \
    tesseract-ocr-vie tesseract-ocr-eng && rm -rf /var/lib/apt/lists/*
# torch first (point pip at a CPU-only torch index here to keep the image small), then polycap with Beam held
# at the launcher's version.
RUN pip install --no-cache-dir torch==2.13.0 \
    && pip install --no-cache-dir ".[${EXTRAS}]" "apache-beam==${BEAM_VERSION}" "torch==2.13.0" \
    && python -c "import apache_beam, polycap; assert apache_beam.__version__ == '${BEAM_VERSION}'"
# The SDK image's entrypoint (/opt/apache/beam/boot) is kept: Beam's workers start through it.
