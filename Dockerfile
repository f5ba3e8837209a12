# Worker / launcher image for Flink, Spark or Dataflow (`--sdk_container_image`).
# GPU workers: build FROM a CUDA base and install the `vllm` extra (it brings its own CUDA torch).
FROM apache/beam_python3.11_sdk:2.77.0
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
ARG EXTRAS=ocr
# Korean / Vietnamese OCR (transforms/backends/ocr_script.py): Tesseract's kor, vie and eng LSTM models
RUN apt-get update && apt-get install -y --no-install-recommends tesseract-ocr-kor tesseract-ocr-vie \
    tesseract-ocr-eng && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir torch==2.13.0 && pip install --no-cache-dir ".[${EXTRAS}]"
